"""The files of a plain-SQL migrations folder: how they are found, named, checksummed and split.

A migration is a file named `NNNN_name.sql` (digits, an underscore, a name). Its version is the number,
its checksum the sha256 of its bytes. A file whose leading comment lines contain `-- dbf: transaction=false`
runs statement by statement outside a transaction (for `CREATE INDEX CONCURRENTLY`, `VACUUM`, PRAGMAs
that refuse to run in one).
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from dbfoundation.errors import ConfigurationError

__all__ = [
    "FOLDER_VARIABLE",
    "SqlFile",
    "Statement",
    "line_of_position",
    "load_sql_files",
    "split_postgres",
    "split_sqlite",
]

FOLDER_VARIABLE = "DATABASE_SQL_MIGRATIONS_PATH"

_FILE_NAME = re.compile(r"(?P<prefix>\d+)_(?P<title>[\w.-]+)\.sql")
_DIRECTIVE = re.compile(r"--\s*dbf:\s*(?P<body>.*?)\s*", re.IGNORECASE)
_NO_TRANSACTION = re.compile(r"transaction\s*=\s*false", re.IGNORECASE)
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$")


@dataclass(frozen=True)
class SqlFile:
    """One migration file, read once: its text and checksum describe the same bytes."""

    version: int
    prefix: str
    """The digits as written in the file name (`0003`), used in the commands messages suggest."""
    path: Path
    text: str
    checksum: str
    """sha256 of the file's bytes, hex."""
    is_transactional: bool

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class Statement:
    """One SQL statement cut out of a file, with the 1-based line it starts on (for error messages)."""

    sql: str
    line: int


def load_sql_files(folder: str | Path) -> list[SqlFile]:
    """Read every `NNNN_name.sql` file in `folder`, sorted by version.

    Other files (README.md, dotfiles, sub-folders) are ignored; a `.sql` file with any other name, two
    files with one version, or an unknown `-- dbf:` directive is an error, never skipped silently.

    Raises:
        ConfigurationError: the folder is missing, or a file in it is misnamed, duplicated or unreadable.
    """
    root = Path(folder)
    shown = str(root)
    if not root.is_dir():
        fix = (
            "it is a file, not a folder; point the variable at the folder holding the NNNN_name.sql files."
            if root.exists()
            else "the folder does not exist; create it or point the variable at yours."
        )
        raise ConfigurationError(FOLDER_VARIABLE, shown, fix)
    files: dict[int, SqlFile] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or entry.suffix.lower() != ".sql" or not entry.is_file():
            continue
        match = _FILE_NAME.fullmatch(entry.name)
        if match is None:
            raise ConfigurationError(
                FOLDER_VARIABLE,
                shown,
                f"{entry.name} is not named NNNN_name.sql (for example 0001_create_users.sql); "
                "rename it so its place in the order is clear.",
            )
        version = int(match["prefix"])
        if version in files:
            raise ConfigurationError(
                FOLDER_VARIABLE,
                shown,
                f"{files[version].name} and {entry.name} share version {version}; renumber one of them.",
            )
        data = entry.read_bytes()
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ConfigurationError(
                FOLDER_VARIABLE, shown, f"{entry.name} is not UTF-8 text ({exc.reason}); save it as UTF-8."
            ) from exc
        files[version] = SqlFile(
            version=version,
            prefix=match["prefix"],
            path=entry,
            text=text,
            checksum=hashlib.sha256(data).hexdigest(),
            is_transactional=_is_transactional(entry.name, shown, text),
        )
    return [files[version] for version in sorted(files)]


def _is_transactional(file_name: str, shown_folder: str, text: str) -> bool:
    """Read the `-- dbf:` directives in the comment lines before the first statement."""
    transactional = True
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("--"):
            break
        directive = _DIRECTIVE.fullmatch(line)
        if directive is None:
            continue
        if _NO_TRANSACTION.fullmatch(directive["body"]):
            transactional = False
        else:
            # A typo such as "transaction=flase" must not silently run the file in a transaction.
            raise ConfigurationError(
                FOLDER_VARIABLE,
                shown_folder,
                f"{file_name} has an unknown directive {line!r}; the only one is '-- dbf: transaction=false'.",
            )
    return transactional


def split_sqlite(text: str) -> list[Statement]:
    """Cut a file into statements the way the sqlite3 shell does, with `sqlite3.complete_statement`.

    A `;` inside a string, a comment or a trigger body does not end a statement. Text after the last `;`
    is kept as a final statement when it holds more than whitespace.
    """
    statements: list[Statement] = []
    start = 0
    end = text.find(";")
    while end != -1:
        chunk = text[start : end + 1]
        if sqlite3.complete_statement(chunk):
            statements.append(Statement(chunk, _line_of(text, start)))
            start = end + 1
        end = text.find(";", end + 1)
    if text[start:].strip():
        statements.append(Statement(text[start:], _line_of(text, start)))
    return statements


def split_postgres(text: str) -> list[Statement]:
    """Cut a file into PostgreSQL statements at each `;` outside quotes, comments and dollar quotes.

    Needed only for files that run outside a transaction: PostgreSQL runs a multi-statement query string
    as one implicit transaction, where `CREATE INDEX CONCURRENTLY` and `VACUUM` are refused. Handles
    '...' (with '' and E'\\'' escapes), "...", -- and nested /* */ comments, and $tag$...$tag$ bodies.
    Pieces holding only comments are dropped.
    """
    statements: list[Statement] = []
    start = 0
    has_sql = False
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "-" and text.startswith("--", i):
            newline = text.find("\n", i)
            i = n if newline == -1 else newline + 1
            continue
        if ch == "/" and text.startswith("/*", i):
            i = _skip_block_comment(text, i)
            continue
        if ch == ";":
            if has_sql:
                statements.append(Statement(text[start : i + 1], _line_of(text, start)))
            start, has_sql = i + 1, False
            i += 1
            continue
        if not ch.isspace():
            has_sql = True
        if ch == "'":
            escaped = i > 0 and text[i - 1] in "eE" and (i == 1 or not _is_word(text[i - 2]))
            i = _skip_string(text, i, backslash_escapes=escaped)
        elif ch == '"':
            close = text.find('"', i + 1)
            i = n if close == -1 else close + 1
        elif ch == "$" and not (i > 0 and _is_word(text[i - 1])):
            tag = _DOLLAR_TAG.match(text, i)
            if tag is None:
                i += 1
            else:
                close = text.find(tag.group(), tag.end())
                i = n if close == -1 else close + len(tag.group())
        else:
            i += 1
    if has_sql:
        statements.append(Statement(text[start:], _line_of(text, start)))
    return statements


def _skip_block_comment(text: str, i: int) -> int:
    depth = 0
    n = len(text)
    while i < n:
        if text.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif text.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    return n


def _skip_string(text: str, i: int, *, backslash_escapes: bool) -> int:
    i += 1
    n = len(text)
    while i < n:
        ch = text[i]
        if backslash_escapes and ch == "\\":
            i += 2
        elif ch == "'":
            if text.startswith("''", i):
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return n


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _line_of(text: str, offset: int) -> int:
    """The 1-based line of the first non-blank character at or after `offset`."""
    stripped = len(text[offset:]) - len(text[offset:].lstrip())
    return text.count("\n", 0, offset + stripped) + 1


def line_of_position(text: str, position: int) -> int:
    """The 1-based line holding the 1-based character `position` (PostgreSQL's error position)."""
    return text.count("\n", 0, max(position - 1, 0)) + 1
