"""Regenerate the example molecules shipped in ``templ_pipeline/data`` (run once; output is committed).

Each pair is a template ligand with one 3D pose (ETKDGv3 + MMFF, fixed seed) and a
related query given as SMILES: drug pairs that share a binding mode, so the
alignment scores are meaningful.
"""

from __future__ import annotations

import csv
from pathlib import Path

from rdkit import Chem
from rdkit.Chem import AllChem

PAIRS = [
    # name, template SMILES, query SMILES
    ("coxib", "Cc1ccc(-c2cc(C(F)(F)F)nn2-c2ccc(S(N)(=O)=O)cc2)cc1", "Cc1onc(-c2ccccc2)c1-c1ccc(S(N)(=O)=O)cc1"),
    ("egfr", "COc1cc2ncnc(Nc3ccc(F)c(Cl)c3)c2cc1OCCCN1CCOCC1", "COCCOc1cc2ncnc(Nc3cccc(C#C)c3)c2cc1OCCOC"),
    ("pde5", "CCCc1nn(C)c2c(=O)[nH]c(-c3cc(S(=O)(=O)N4CCN(C)CC4)ccc3OCC)nc12",
     "CCCc1nc(C)c2c(=O)[nH]c(-c3cc(S(=O)(=O)N4CCN(CC)CC4)ccc3OCC)nn12"),
    ("mpro", "O=C(Cc1cccc(Cl)c1)Nc1cccnc1", "O=C(Nc1cncc2ccccc12)C1(c2cccc(Cl)c2)CCOCC1"),
    ("d2", "O=C(CCCN1CCC(O)(c2ccc(Cl)cc2)CC1)c1ccc(F)cc1", "O=C(CCCN1CC=C(n2c(=O)[nH]c3ccccc32)CC1)c1ccc(F)cc1"),
    ("nsaid", "OC(=O)Cc1ccccc1Nc1c(Cl)cccc1Cl", "Cc1ccc(Nc2c(F)cccc2Cl)c(CC(=O)O)c1"),
]


def template_pose(smiles: str, seed: int = 7) -> Chem.Mol:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    AllChem.EmbedMolecule(mol, params)
    AllChem.MMFFOptimizeMolecule(mol)
    return Chem.RemoveHs(mol)


def main() -> None:
    out = Path(__file__).resolve().parents[1] / "templ_pipeline" / "data"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "examples.csv", "w", newline="") as index:
        rows = csv.writer(index)
        rows.writerow(["name", "template_sdf", "query_smiles"])
        for name, template_smiles, query_smiles in PAIRS:
            mol = template_pose(template_smiles)
            mol.SetProp("_Name", f"{name}_template")
            with Chem.SDWriter(str(out / f"{name}_template.sdf")) as writer:
                writer.write(mol)
            rows.writerow([name, f"{name}_template.sdf", query_smiles])


if __name__ == "__main__":
    main()
