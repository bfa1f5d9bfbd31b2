"""Structure-aware mutations of genuine ike_intermediate messages, both directions (see ike_mutate.py)."""

if __name__ == "__main__":
    import fuzzlib
    fuzzlib.main("fuzz_ike_mutate_ike_intermediate")

import ike_mutate

KIND = "ike_intermediate"


def TestOneInput(data: bytes) -> None:
    ike_mutate.run_one(KIND, data)


def seeds() -> dict[str, bytes]:
    return ike_mutate.seeds(KIND)
