"""Make WordNet available to NLTK offline, for METEOR.

NLTK reads WordNet from `<NLTK_DATA>/corpora/wordnet`. Without internet, `nltk.download` is not an option,
but Debian's `wordnet-base` package installs the same WordNet 3.0 database in /usr/share/wordnet. NLTK also
needs a `lexnames` file that Debian does not ship; its 45 lines are fixed (lexnames(5WN) man page), so we
generate it. On first use we build `~/.cache/sparsefit/nltk_data/corpora/wordnet` from copies of the Debian
files (28 MB) plus the generated `lexnames`, and add that folder to `nltk.data.path`. Links do not work:
NLTK 3.10 refuses symlinks that resolve outside the corpus root and any multiply-linked (hard-linked) file.
NLTK's reader also opens `index.sense` when it loads (Debian ships it separately, in
`wordnet-sense-index`); when absent we generate it from the data files with NLTK's own sense-key rules
(~8 s, once). METEOR itself only uses synsets and lemma names.

A WordNet that NLTK already finds (e.g. from `nltk.download("wordnet")`) is used as is.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")
INSTALL_HINT = "install it with `apt-get install wordnet-base` (or `python -m nltk.downloader wordnet`)"

# The database files NLTK's WordNetCorpusReader opens (lexnames is generated, not copied).
WORDNET_FILES = (
    "data.adj", "data.adv", "data.noun", "data.verb",
    "index.adj", "index.adv", "index.noun", "index.verb",
    "adj.exc", "adv.exc", "noun.exc", "verb.exc",
)
# Read lazily by NLTK for a few lookups (sense keys, counts); linked when present.
OPTIONAL_WORDNET_FILES = ("index.sense", "cntlist.rev", "cntlist", "sentidx.vrb", "sents.vrb")

# lexnames(5WN): file number, lexicographer file name; the syntactic category follows from the name.
LEXICOGRAPHER_FILES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
    "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption", "verb.contact", "verb.creation",
    "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
)
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


@dataclass(frozen=True)
class WordNetStatus:
    """Where NLTK's WordNet comes from, or why it is missing (`location` None, `note` says what to do)."""
    location: str | None
    version: str | None
    note: str


def lexnames_text() -> str:
    """The `lexnames` file: `NN<TAB>name<TAB>category` per line, 45 lines."""
    return "".join(f"{number:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n"
                   for number, name in enumerate(LEXICOGRAPHER_FILES))


def default_nltk_data_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "sparsefit" / "nltk_data"


def _is_complete(corpus_dir: Path) -> bool:
    # a folder from an older build that linked the files would be refused by NLTK: rebuild it
    return all((corpus_dir / name).is_file() and not (corpus_dir / name).is_symlink()
               and (corpus_dir / name).stat().st_nlink == 1 for name in WORDNET_FILES + ("lexnames", "index.sense"))


def build_nltk_wordnet(source_dir: Path = DEBIAN_WORDNET_DIR,
                       nltk_data_dir: Path | None = None) -> Path | None:
    """Build `<nltk_data_dir>/corpora/wordnet` from a WordNet 3.0 `dict` folder; return the NLTK_DATA folder.

    Returns None when `source_dir` lacks the database files. Safe to call repeatedly and from several
    processes: the folder is assembled under a temporary name and renamed into place.
    """
    source_dir = Path(source_dir)
    if not all((source_dir / name).is_file() for name in WORDNET_FILES):
        return None
    nltk_data_dir = Path(nltk_data_dir) if nltk_data_dir is not None else default_nltk_data_dir()
    corpus_dir = nltk_data_dir / "corpora" / "wordnet"
    if _is_complete(corpus_dir):
        return nltk_data_dir
    corpus_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="wordnet-", dir=corpus_dir.parent))
    for name in WORDNET_FILES + OPTIONAL_WORDNET_FILES:
        if (source_dir / name).is_file():
            shutil.copyfile(source_dir / name, staging / name)
    (staging / "lexnames").write_text(lexnames_text(), encoding="ascii")
    _allow_nltk_data_dir(nltk_data_dir)  # NLTK only opens corpora under a folder in nltk.data.path
    if not (staging / "index.sense").is_file():
        _write_index_sense(staging, source_dir)
    _move_into_place(staging, corpus_dir)
    return nltk_data_dir


def _move_into_place(staging: Path, corpus_dir: Path) -> None:
    if _is_complete(corpus_dir):  # another process finished first: keep its folder
        shutil.rmtree(staging, ignore_errors=True)
        return
    if corpus_dir.exists() or corpus_dir.is_symlink():  # stale or half-built: replace it
        shutil.rmtree(corpus_dir, ignore_errors=True)
    staging.chmod(0o755)
    try:
        staging.rename(corpus_dir)
    except OSError:  # lost a race after all; fine if the winner's folder is usable
        shutil.rmtree(staging, ignore_errors=True)
        if not _is_complete(corpus_dir):
            raise


def _allow_nltk_data_dir(nltk_data_dir: Path) -> None:
    import nltk

    if str(nltk_data_dir) not in nltk.data.path:
        nltk.data.path.insert(0, str(nltk_data_dir))


def _write_index_sense(corpus_dir: Path, source_dir: Path) -> None:
    """Write `index.sense` (sense_key offset sense_number tag_count, sorted) for the database in corpus_dir."""
    import warnings

    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class _ReaderWithoutVersionMap(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):  # this mapping is what needs index.sense; not needed here
            return None

    (corpus_dir / "index.sense").write_text("", encoding="ascii")
    with warnings.catch_warnings():  # "multilingual functions are not available": expected, no OMW here
        warnings.simplefilter("ignore")
        reader = _ReaderWithoutVersionMap(str(corpus_dir), None)
    tag_counts = {}
    if (source_dir / "cntlist.rev").is_file():
        for line in (source_dir / "cntlist.rev").read_text(encoding="utf-8").splitlines():
            key, _sense_number, count = line.split()
            tag_counts[key] = count
    lines = {}
    for synset in reader.all_synsets():
        for lemma in synset.lemmas():
            key = lemma.key()  # lemmas differing only in case ("A", "a") share one key
            senses = reader._lemma_pos_offset_map[lemma.name().lower()][synset.pos()]
            lines[key] = f"{key} {synset.offset():08d} {senses.index(synset.offset()) + 1} {tag_counts.get(key, 0)}\n"
    (corpus_dir / "index.sense").write_text("".join(sorted(lines.values())), encoding="utf-8")


def ensure_wordnet(source_dir: Path = DEBIAN_WORDNET_DIR, nltk_data_dir: Path | None = None,
                   use_existing: bool = True) -> WordNetStatus:
    """Make `nltk.corpus.wordnet` loadable and say where it comes from.

    With `use_existing`, a WordNet NLTK already finds wins; otherwise (or if there is none) one is built
    from `source_dir` and its folder is added to `nltk.data.path`.
    """
    import nltk

    if use_existing:
        try:
            found = nltk.data.find("corpora/wordnet")
            return _loaded_status(str(found))
        except LookupError:
            pass
    built = build_nltk_wordnet(source_dir, nltk_data_dir)
    if built is None:
        return WordNetStatus(None, None, f"METEOR skipped: WordNet not found in {source_dir} or NLTK data; "
                                         f"{INSTALL_HINT}")
    _allow_nltk_data_dir(built)
    return _loaded_status(str(built / "corpora" / "wordnet"), f"built from {Path(source_dir).resolve()}")


def _loaded_status(location: str, origin: str = "found by NLTK") -> WordNetStatus:
    from nltk.corpus import wordnet

    try:
        version = wordnet.get_version()
    except (LookupError, OSError, ValueError, AssertionError) as err:
        return WordNetStatus(None, None, f"METEOR skipped: WordNet at {location} could not be read "
                                         f"({type(err).__name__}: {err}); {INSTALL_HINT}")
    return WordNetStatus(location, version, f"WordNet {version} at {location} ({origin})")
