"""Structure-aware mutations of genuine create_child messages, both directions (see ike_mutate.py)."""

if __name__ == "__main__":
    import fuzzlib
    fuzzlib.main("fuzz_ike_mutate_create_child")

import ike_mutate

KIND = "create_child"


def TestOneInput(data: bytes) -> None:
    ike_mutate.run_one(KIND, data)


def seeds() -> dict[str, bytes]:
    return ike_mutate.seeds(KIND)
