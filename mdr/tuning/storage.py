"""The Optuna store of a study: `open_storage` opens a journal file (breaking a stale lock a killed
worker left) or a storage URL, turning a corrupt, locked or unreachable store into one `TuningError`
message (`_hide_password` keeps credentials out of it); `open_study` creates or resumes the study with
the profile's TPE sampler and median pruner and refuses one created with other settings."""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

from mdr.tuning.context import TuningContext
from mdr.tuning.spec import TuningError


# ---- storage --------------------------------------------------------------------------------------

def _is_url(storage: str) -> bool:
    return "://" in storage


def open_storage(storage: str) -> Any:
    """An Optuna storage for a journal file path or a URL; a corrupt or locked store raises TuningError
    with one message naming it and what to do."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    if _is_url(storage):
        shown = _hide_password(storage)
        try:
            kwargs: dict[str, Any] = {}
            if storage.startswith("sqlite"):
                kwargs["engine_kwargs"] = {"connect_args": {"timeout": float(os.environ.get("MDR_SQLITE_TIMEOUT", 30))}}
            # heartbeats: a trial whose worker died (any machine) is failed after `grace_period` s
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(storage, heartbeat_interval=60, grace_period=180, **kwargs)
        except Exception as e:  # sqlalchemy errors, bad URLs, missing drivers
            text = f"{type(e).__name__}: {e}".splitlines()[0]
            if "locked" in text:
                hint = ("another process holds a write lock on it; wait for it to finish, or use the journal file "
                        "(default) or PostgreSQL for several workers")
            elif "not a database" in text or "malformed" in text:
                hint = "the file is damaged: move it away to start afresh, or restore a backup"
            else:
                hint = "check the URL, that the server is reachable and that its driver is installed (e.g. psycopg2 for postgresql://)"
            raise TuningError(f"cannot open the Optuna store {shown}: {text}; {hint}") from None
    path = Path(storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale_lock(path)
    try:
        return JournalStorage(JournalFileBackend(str(path)))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise TuningError(
            f"the Optuna journal {path} is corrupt ({type(e).__name__}: {e}); it was left as is. Move it away "
            f"(mv {path} {path}.broken) to start a new study, or restore it from a backup; finished trials' run "
            f"folders and MLflow runs are kept either way") from None
    except optuna.exceptions.OptunaError as e:
        raise TuningError(f"cannot read the Optuna journal {path}: {e}") from None


def _clear_stale_lock(path: Path, stale_after: float = 120.0) -> None:
    """A journal write holds `<file>.lock` for milliseconds; one older than `stale_after` seconds was
    left by a killed process. Optuna would break it after 30 s of waiting; say so and break it now."""
    lock = Path(str(path) + ".lock")
    try:
        age = time.time() - lock.lstat().st_mtime
    except FileNotFoundError:
        return
    if age > stale_after:
        warnings.warn(f"{lock} is a stale lock ({age:.0f} s old, left by a killed worker); removing it", stacklevel=2)
        lock.unlink(missing_ok=True)


def _hide_password(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url


def _sampler(ctx: TuningContext, offset: int = 0) -> Any:
    """TPE with the profile's settings. A fixed seed would make a resumed study or a second worker
    propose the same points again, so the seed is offset by the trials already in the study and by the
    worker's index: a fresh single-worker study is reproducible, and no two starts repeat each other."""
    import optuna

    kwargs = dict(ctx.settings.sampler)
    if kwargs.get("seed") is not None:
        kwargs["seed"] = int(kwargs["seed"]) + offset
    return optuna.samplers.TPESampler(**kwargs)


def _pruner(ctx: TuningContext) -> Any:
    import optuna

    return optuna.pruners.MedianPruner(**ctx.settings.pruner)


def open_study(ctx: TuningContext, create: bool = True, worker: int = 0) -> Any:
    """Create the study or load it (resume); refuse a study created with other settings."""
    import optuna

    storage = open_storage(ctx.storage)
    try:
        if create:
            optuna.create_study(study_name=ctx.study_name, storage=storage, direction="maximize", load_if_exists=True)
        try:
            existing = optuna.load_study(study_name=ctx.study_name, storage=storage)
        except KeyError:
            raise TuningError(f"no study {ctx.study_name} in {_hide_password(ctx.storage)}") from None
        offset = len(existing.get_trials(deepcopy=False)) + 7919 * worker
        study = optuna.load_study(study_name=ctx.study_name, storage=storage, sampler=_sampler(ctx, offset),
                                  pruner=_pruner(ctx))
    except TuningError:
        raise
    except (ValueError, KeyError, TypeError) as e:  # a journal line damaged after opening
        raise TuningError(f"the Optuna store {ctx.storage} could not be read: {type(e).__name__}: {e}") from None
    want = ctx.study_attrs()
    have = study.user_attrs
    if not have:
        for key, value in want.items():
            study.set_user_attr(key, value)
    else:
        changed = sorted(k for k in want if json.dumps(have.get(k), sort_keys=True) != json.dumps(want[k], sort_keys=True))
        if changed:
            details = "; ".join(f"{k}: study has {have.get(k)!r}, params now give {want[k]!r}" for k in changed)
            raise TuningError(
                f"study {ctx.study_name} in {_hide_password(ctx.storage)} was created with other settings ({details}). "
                f"Its trials are not comparable with new ones: pass --study-name <new name>, or move the store away "
                f"to start afresh")
    return study
