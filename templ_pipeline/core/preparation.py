"""Query preparation: the input molecule turned into the molecule(s) that are embedded, and a record of what changed.

Shared by ``select-best --query`` and every query of ``templ screen``. By default:

- Fragments: counterions and solvents go (RDKit's ``FragmentRemover`` list: TFA,
  Na+, HCl, water, ...), then the largest organic fragment is kept
  (``LargestFragmentChooser(preferOrganic=True)``). Embedded with the ligand, a
  counterion is aligned as part of the pose: a TFA salt's combo dropped from 0.713
  to 0.617 with the same parent pose. Dropping a second large organic fragment is
  a warning: the input may be a co-crystal or a mixture, not a salt.
- Unassigned stereocentres and double bonds: the stereoisomers are enumerated (up
  to a cap) and each is its own query. Left unassigned, ETKDG picks a configuration
  per conformer and one query's poses mix isomers.
- Isotopes are cleared for embedding and alignment and hydrogens are added the same
  way whatever the input spelled: a CD3 analogue kept its deuteriums as explicit
  atoms and its best pose lay 1.5 A from the CH3 analogue's.
- Charges, assigned stereo, tautomers and protonation states are kept as given.
- Atom order: the input and every isomer made of it are put in one canonical form
  (:func:`~templ_pipeline.core.canonical.canonical_molecule`) before anything that depends
  on atom order (fragment choice, stereoisomer sampling, template choice, embedding), so
  any spelling of a molecule, and its SD record, is prepared and embedded the same way.

Refused before any conformer is made: elements the shape model has no radius for
(measured per element on the installed RDKit, see :func:`element_supported`), and
molecules of fewer than :data:`MIN_HEAVY_ATOMS` heavy atoms.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from enum import StrEnum

from rdkit import Chem, rdBase
from rdkit.Chem.EnumerateStereoisomers import EnumerateStereoisomers, GetStereoisomerCount, StereoEnumerationOptions
from rdkit.Chem.MolStandardize import rdMolStandardize

from templ_pipeline.core.canonical import canonical_molecule
from templ_pipeline.core.labels import PreparationAction, QueryFailureReason

__all__ = [
    "DEFAULT_MAX_ISOMERS",
    "MIN_HEAVY_ATOMS",
    "FragmentPolicy",
    "Preparation",
    "PreparationAction",
    "PreparationError",
    "PreparationOptions",
    "PreparedIsomer",
    "StereoPolicy",
    "TautomerPolicy",
    "element_supported",
    "prepare",
    "refuse_unscorable",
    "stereo_enumeration",
]

#: Fewer heavy atoms than this have no shape to align: ``O`` failed every conformer, ``CC``
#: gave 200 identical poses with combo 0.05.
MIN_HEAVY_ATOMS = 3
#: Stereoisomers scored per query at most; a PROTAC with 6 unassigned centres has 64.
DEFAULT_MAX_ISOMERS = 8
#: A dropped organic fragment this large (heavy atoms) is a warning, not a counterion.
LARGE_FRAGMENT = 6
#: Seeds RDKit's sampling when the isomers outnumber the cap, so every run picks the same ones.
_STEREO_SEED = 0x5EED


class FragmentPolicy(StrEnum):
    """What happens to a multi-fragment input."""

    LARGEST = "largest"  # drop known counterions and solvents, then keep the largest organic fragment
    ALL = "all"  # embed every fragment together, as given


class StereoPolicy(StrEnum):
    """What happens to unassigned stereocentres and double bonds."""

    ENUMERATE = "enumerate"  # every isomer (up to the cap) is scored as its own query
    FIRST = "first"  # the first isomer in canonical SMILES order only
    AS_IS = "as-is"  # left unassigned: ETKDG chooses per conformer


class TautomerPolicy(StrEnum):
    """Whether the input tautomer is kept."""

    AS_IS = "as-is"
    CANONICAL = "canonical"  # RDKit's canonical tautomer (rdMolStandardize.TautomerEnumerator)


class PreparationError(ValueError):
    """A query that cannot be scored; ``reason`` is bounded, the message says why in one line."""

    def __init__(self, reason: QueryFailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class PreparationOptions:
    """How queries are prepared; the defaults are what a medicinal chemist expects of a screen."""

    fragments: FragmentPolicy = FragmentPolicy.LARGEST
    stereo: StereoPolicy = StereoPolicy.ENUMERATE
    max_isomers: int = DEFAULT_MAX_ISOMERS
    tautomer: TautomerPolicy = TautomerPolicy.AS_IS

    def as_dict(self) -> dict[str, str | int]:
        """The options as campaign parameters (a resumed campaign must use the same)."""
        return {"fragments": str(self.fragments), "stereo": str(self.stereo), "max_isomers": self.max_isomers,
                "tautomer": str(self.tautomer)}


@dataclass(frozen=True)
class PreparedIsomer:
    """One molecule to embed: hydrogen-free, isotope-free, stereo as chosen, in canonical atom order."""

    mol: Chem.Mol
    smiles: str
    index: int  # 1-based among the enumerated isomers; 0 when nothing was enumerated
    count: int  # isomers of the query that are scored


@dataclass(frozen=True)
class Preparation:
    """What was done to one input, and the isomers that result."""

    input_smiles: str
    isomers: tuple[PreparedIsomer, ...]
    removed: tuple[str, ...] = ()  # SMILES of the dropped fragments
    actions: frozenset[PreparationAction] = field(default_factory=frozenset)
    unassigned_stereo: int = 0  # stereoisomers the unassigned centres allow (RDKit's upper bound)
    warnings: tuple[str, ...] = ()

    @property
    def capped(self) -> bool:
        return PreparationAction.STEREO_CAPPED in self.actions

    def fields(self) -> dict[str, str | int]:
        """The record of the preparation, for the row, the pose and the ``query.prepared`` log event."""
        return {
            "input_smiles": self.input_smiles,
            "removed": ".".join(self.removed),
            "isomers": len(self.isomers),
            "stereoisomers_possible": self.unassigned_stereo,
            "actions": ",".join(sorted(self.actions)) or str(PreparationAction.UNCHANGED),
        }


@functools.cache
def element_supported(atomic_number: int) -> bool:
    """Whether RDKit's shape model has a radius for this element, asked of the installed RDKit.

    ``rdShapeAlign`` raises "No VdW radius for atom with Z=78" for an element outside
    its table; on RDKit 2026.09 the table holds the main-group elements (H to Ca,
    Ga to Ba, Tl to Ra) and no transition metal, lanthanide or actinide. The probe
    prepares the shape of a four-carbon chain carrying the element, once per element.
    """
    from rdkit.Chem import rdShapeAlign

    probe = Chem.RWMol(Chem.MolFromSmiles("CCCC"))
    atom = probe.AddAtom(Chem.Atom(atomic_number))
    probe.AddBond(1, atom, Chem.BondType.SINGLE)
    mol = probe.GetMol()
    mol.UpdatePropertyCache(strict=False)
    conformer = Chem.Conformer(mol.GetNumAtoms())
    for index in range(mol.GetNumAtoms()):
        conformer.SetAtomPosition(index, (1.5 * index, float(index % 2), 0.3 * index))
    conformer.Set3D(True)
    mol.AddConformer(conformer)
    try:
        rdShapeAlign.PrepareConformer(mol)
    except (RuntimeError, ValueError):
        return False
    return True


def prepare(mol: Chem.Mol, options: PreparationOptions = PreparationOptions(),
            input_smiles: str | None = None) -> Preparation:
    """Prepare a parsed query; ``PreparationError`` when it cannot be scored at all."""
    given = input_smiles if input_smiles is not None else Chem.MolToSmiles(mol)
    actions: set[PreparationAction] = set()
    warnings: list[str] = []
    mol = canonical_molecule(mol)
    _refuse_elements(mol)  # the whole input: a metal complex written as ions must not lose its metal silently
    kept, removed = _choose_fragment(mol, options.fragments, actions, warnings)
    _refuse_small(kept)
    kept = _without_isotopes(kept, actions)
    if options.tautomer is TautomerPolicy.CANONICAL:
        kept = _canonical_tautomer(kept, actions)
    isomers, possible = _stereoisomers(kept, options, actions)
    isomers = tuple(PreparedIsomer(canonical_molecule(isomer.mol), isomer.smiles, isomer.index, isomer.count)
                    for isomer in isomers)
    return Preparation(input_smiles=given, isomers=isomers, removed=removed, actions=frozenset(actions),
                       unassigned_stereo=possible, warnings=tuple(warnings))


def _choose_fragment(mol: Chem.Mol, policy: FragmentPolicy, actions: set[PreparationAction],
                     warnings: list[str]) -> tuple[Chem.Mol, tuple[str, ...]]:
    fragments = Chem.GetMolFrags(mol, asMols=True)
    if policy is FragmentPolicy.ALL or len(fragments) < 2:
        return mol, ()
    with rdBase.BlockLogs():
        salts_gone = _fragment_remover().remove(mol)
        kept = _fragment_chooser().choose(salts_gone)
    unclaimed = Chem.MolToSmiles(kept)  # the first fragment with this SMILES is the one kept
    not_salts = {Chem.MolToSmiles(fragment) for fragment in Chem.GetMolFrags(salts_gone, asMols=True)}
    removed = []
    for fragment in fragments:
        smiles = Chem.MolToSmiles(fragment)
        if smiles == unclaimed:
            unclaimed = None
            continue
        removed.append(smiles)
        organic = any(atom.GetAtomicNum() == 6 for atom in fragment.GetAtoms())
        if organic and smiles in not_salts and fragment.GetNumHeavyAtoms() >= LARGE_FRAGMENT:
            actions.add(PreparationAction.LARGE_FRAGMENT_REMOVED)
            warnings.append(f"dropped a second large organic fragment {smiles} ({fragment.GetNumHeavyAtoms()} "
                            "heavy atoms): a mixture or co-crystal rather than a salt?")
    if removed:
        actions.add(PreparationAction.FRAGMENTS_REMOVED)
    return kept, tuple(removed)


@functools.cache
def _fragment_remover() -> rdMolStandardize.FragmentRemover:
    return rdMolStandardize.FragmentRemover()  # parses RDKit's salt and solvent list: about 15 ms, once


@functools.cache
def _fragment_chooser() -> rdMolStandardize.LargestFragmentChooser:
    return rdMolStandardize.LargestFragmentChooser(preferOrganic=True)


@functools.cache
def _tautomer_enumerator() -> rdMolStandardize.TautomerEnumerator:
    return rdMolStandardize.TautomerEnumerator()


def refuse_unscorable(mol: Chem.Mol) -> None:
    """``PreparationError`` when ``mol`` has an element without a shape radius or too few heavy atoms."""
    _refuse_elements(mol)
    _refuse_small(mol)


def _refuse_elements(mol: Chem.Mol) -> None:
    unsupported = sorted({atom.GetSymbol() for atom in mol.GetAtoms() if not element_supported(atom.GetAtomicNum())})
    if unsupported:
        raise PreparationError(QueryFailureReason.UNSUPPORTED_ELEMENT,
                               f"the shape model has no radius for {', '.join(unsupported)}: "
                               "metal complexes and other elements outside its table cannot be aligned")


def _refuse_small(mol: Chem.Mol) -> None:
    heavy = mol.GetNumHeavyAtoms()
    if heavy < MIN_HEAVY_ATOMS:
        raise PreparationError(QueryFailureReason.TOO_SMALL, f"{heavy} heavy atom(s): too small to align "
                                                  f"(at least {MIN_HEAVY_ATOMS} are needed)")


def _without_isotopes(mol: Chem.Mol, actions: set[PreparationAction]) -> Chem.Mol:
    """The molecule with isotope labels cleared and every hydrogen implicit."""
    if any(atom.GetIsotope() for atom in mol.GetAtoms()):
        actions.add(PreparationAction.ISOTOPES_CLEARED)
        mol = Chem.Mol(mol)
        for atom in mol.GetAtoms():
            atom.SetIsotope(0)
    return Chem.RemoveHs(mol, sanitize=True)


def _canonical_tautomer(mol: Chem.Mol, actions: set[PreparationAction]) -> Chem.Mol:
    with rdBase.BlockLogs():
        canonical = _tautomer_enumerator().Canonicalize(mol)
    if Chem.MolToSmiles(canonical) != Chem.MolToSmiles(mol):
        actions.add(PreparationAction.TAUTOMER_CANONICALIZED)
    return canonical


def stereo_enumeration(options: PreparationOptions) -> StereoEnumerationOptions:
    """How a molecule's unassigned centres are enumerated, and counted: those only, each isomer once, at most
    ``max_isomers`` of them, sampled with a fixed seed when there are more."""
    return StereoEnumerationOptions(onlyUnassigned=True, unique=True, maxIsomers=options.max_isomers,
                                    rand=_STEREO_SEED)


def _stereoisomers(mol: Chem.Mol, options: PreparationOptions,
                   actions: set[PreparationAction]) -> tuple[tuple[PreparedIsomer, ...], int]:
    enumeration = stereo_enumeration(options)
    possible = GetStereoisomerCount(mol, options=enumeration)
    if possible <= 1:
        return (PreparedIsomer(mol, Chem.MolToSmiles(mol), 0, 1),), 1
    if options.stereo is StereoPolicy.AS_IS:
        actions.add(PreparationAction.STEREO_UNASSIGNED)
        return (PreparedIsomer(mol, Chem.MolToSmiles(mol), 0, 1),), possible
    found = sorted(((Chem.MolToSmiles(isomer), isomer) for isomer in EnumerateStereoisomers(mol, options=enumeration)),
                   key=lambda pair: pair[0])
    if len(found) <= 1:  # the centres RDKit flagged were not real ones
        smiles, isomer = found[0] if found else (Chem.MolToSmiles(mol), mol)
        return (PreparedIsomer(isomer, smiles, 0, 1),), 1
    if options.stereo is StereoPolicy.FIRST:
        actions.add(PreparationAction.STEREO_FIRST)
        smiles, isomer = found[0]
        return (PreparedIsomer(isomer, smiles, 1, 1),), possible
    actions.add(PreparationAction.STEREO_ENUMERATED)
    if possible > options.max_isomers and len(found) >= options.max_isomers:
        actions.add(PreparationAction.STEREO_CAPPED)
    return tuple(PreparedIsomer(isomer, smiles, index, len(found))
                 for index, (smiles, isomer) in enumerate(found, start=1)), possible
