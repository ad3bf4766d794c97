"""Conformer generation for a query ligand given as SMILES (ETKDGv3)."""

from __future__ import annotations

from rdkit import Chem, rdBase
from rdkit.Chem import AllChem

DEFAULT_SEED = 42


def molecule_from_smiles(smiles: str) -> Chem.Mol:
    """Parse SMILES; a ``ValueError`` names the input when RDKit cannot read it."""
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(smiles) if smiles and smiles.strip() else None
    if mol is None:
        raise ValueError(f"cannot parse SMILES {smiles!r}")
    return mol


def generate_conformers(
    query: str | Chem.Mol,
    num_conformers: int = 200,
    *,
    seed: int = DEFAULT_SEED,
    n_workers: int = 1,
) -> Chem.Mol:
    """Embed ``num_conformers`` conformers with ETKDGv3 and a fixed seed.

    Hydrogens are added for embedding and removed afterwards. RDKit embeds on
    ``n_workers`` native threads: those count against the same thread limits as
    any pool, so the caller passes the worker count it was granted.
    """
    if num_conformers < 1:
        raise ValueError(f"num_conformers must be at least 1, got {num_conformers}")
    mol = molecule_from_smiles(query) if isinstance(query, str) else Chem.Mol(query)
    with_hs = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    params.numThreads = max(1, n_workers)
    conf_ids = list(AllChem.EmbedMultipleConfs(with_hs, numConfs=num_conformers, params=params))
    if not conf_ids:
        params.useRandomCoords = True  # large or strained rings: random starts embed where ETKDG alone fails
        conf_ids = list(AllChem.EmbedMultipleConfs(with_hs, numConfs=num_conformers, params=params))
    if not conf_ids:
        raise ValueError(f"could not embed any conformer for {Chem.MolToSmiles(mol)!r}")
    return Chem.RemoveHs(with_hs)
