"""Write examples/credit.csv: a synthetic credit-risk table (no real people), the shape of
the loan data sets subpopulation attacks were studied on (Jagielski et al. 2021 used
interest-rate and loan-grade subpopulations of a credit set).

    python examples/make_credit_csv.py          # 4,000 loans, seed 0

Columns: id, loan_grade (A-G), interest_rate (%), income, home_ownership (RENT, OWN,
MORTGAGE), purpose (car, debt, home, education, business), term (36/60 months), default
(0/1). Whether a loan defaults follows grade, income, ownership and purpose, with noise.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

GRADES = "ABCDEFG"
HOMES = ("RENT", "OWN", "MORTGAGE")
PURPOSES = ("car", "debt", "home", "education", "business")


def loans(n: int, seed: int) -> list[list]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        grade = int(rng.choice(7, p=[0.2, 0.24, 0.2, 0.15, 0.1, 0.07, 0.04]))
        home = HOMES[int(rng.choice(3, p=[0.45, 0.15, 0.4]))]
        purpose = PURPOSES[int(rng.choice(5, p=[0.2, 0.4, 0.15, 0.1, 0.15]))]
        income = int(rng.lognormal(10.9, 0.45))
        term = 60 if rng.random() < 0.3 + 0.05 * grade else 36
        rate = round(6 + 3.2 * grade + float(rng.normal(0, 1.0)), 2)
        risk = (-2.6 + 0.55 * grade - 1.1 * np.log(income / 55_000)
                + 0.5 * (home == "RENT") + 0.6 * (purpose == "business")
                + 0.3 * (term == 60) + rng.normal(0, 0.5))
        rows.append([10_000 + i, GRADES[grade], rate, income, home, purpose, term,
                     int(risk > 0)])
    return rows


OUT = Path(__file__).with_name("credit.csv")


def main(path: Path = OUT, n: int = 4000) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "loan_grade", "interest_rate", "income", "home_ownership",
                         "purpose", "term", "default"])
        writer.writerows(loans(n, 0))
    print(f"wrote {path}")


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:2]))
