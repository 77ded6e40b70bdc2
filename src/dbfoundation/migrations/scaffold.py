"""`dbf init`: scaffold an Alembic migrations folder whose env.py is a few lines calling dbfoundation."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from string import Template

from dbfoundation.errors import ConfigurationError

__all__ = ["init"]

_ALEMBIC_INI = """\
# For the plain `alembic` command; dbf and db.migrate() do not need this file.
# The database URL comes from DATABASE_URL (or .env), never from here.
[alembic]
script_location = {folder}
prepend_sys_path = .
"""


def init(folder: str | Path, *, metadata: str = "None", write_alembic_ini: bool = True) -> list[Path]:
    """Create `folder` with env.py, script.py.mako and versions/; return the files written.

    `metadata` is the Python expression env.py uses as target_metadata, e.g. "Base.metadata" after an
    import you add. Refuses to overwrite an existing env.py.
    """
    root = Path(folder)
    if (root / "env.py").exists():
        raise ConfigurationError(
            "DATABASE_MIGRATIONS_PATH", str(root), "it already holds an env.py; choose another folder or keep it."
        )
    templates = resources.files("dbfoundation.migrations") / "templates"
    (root / "versions").mkdir(parents=True, exist_ok=True)
    written = [root / "env.py", root / "script.py.mako"]
    env = Template((templates / "env.py.tmpl").read_text()).substitute(metadata=metadata)
    written[0].write_text(env)
    written[1].write_text((templates / "script.py.mako").read_text())
    ini = Path("alembic.ini")
    if write_alembic_ini and not ini.exists():
        ini.write_text(_ALEMBIC_INI.format(folder=root.as_posix()))
        written.append(ini)
    return written
