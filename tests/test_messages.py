"""Messages a newcomer meets: a finished run says it is complete and where its outputs are; a mistyped run id
is answered with the closest id."""
from __future__ import annotations

from mdr.engine import train
from tests.conftest import StopAfter, tiny_config


def test_rerunning_a_finished_run_says_it_is_complete_and_where(tiny_data, tmp_path, capsys):
    config = tiny_config(tiny_data)
    run_dir = tmp_path / "run"
    try:
        train(config, run_dir, progress=False, echo=False, callbacks=[StopAfter(1)])
    except KeyboardInterrupt:
        pass
    train(config, run_dir, progress=False, echo=True)
    assert f"[run] resuming after epoch 1 of {config.train.epochs}" in capsys.readouterr().out
    train(config, run_dir, progress=False, echo=True)
    out = capsys.readouterr().out
    assert f"[run] already complete ({config.train.epochs}/{config.train.epochs} epochs)" in out
    assert str(run_dir) in out and "resuming" not in out


def test_a_run_id_with_one_wrong_character_is_answered_with_the_closest(capsys):
    from mdr.grid import load_grid
    from pipeline import train as train_stage

    rid = next(iter(load_grid("smoke").runs))
    typo = rid[:-1] + ("0" if rid[-1] != "0" else "1")
    assert train_stage.main(["--profile", "smoke", "--run", typo, "--no-tracking"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (f"error: no run {typo!r} in profile smoke; did you mean {rid}? `python -m pipeline runs "
                    f"--profile smoke` lists them")
    # nothing close: no guess
    assert train_stage.main(["--profile", "smoke", "--run", "nonsense", "--no-tracking"]) == 2
    assert "did you mean" not in capsys.readouterr().err
