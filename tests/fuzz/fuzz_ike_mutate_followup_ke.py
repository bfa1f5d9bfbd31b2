"""Structure-aware mutations of genuine followup_ke messages, both directions (see ike_mutate.py)."""

if __name__ == "__main__":
    import fuzzlib
    fuzzlib.main("fuzz_ike_mutate_followup_ke")

import ike_mutate

KIND = "followup_ke"


def TestOneInput(data: bytes) -> None:
    ike_mutate.run_one(KIND, data)


def seeds() -> dict[str, bytes]:
    return ike_mutate.seeds(KIND)
