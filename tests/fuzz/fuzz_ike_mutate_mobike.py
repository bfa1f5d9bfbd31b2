"""Structure-aware mutations of genuine mobike messages, both directions (see ike_mutate.py)."""

if __name__ == "__main__":
    import fuzzlib
    fuzzlib.main("fuzz_ike_mutate_mobike")

import ike_mutate

KIND = "mobike"


def TestOneInput(data: bytes) -> None:
    ike_mutate.run_one(KIND, data)


def seeds() -> dict[str, bytes]:
    return ike_mutate.seeds(KIND)
