"""Atomic, byte-stable outputs; interrupted writes cleaned up; the folder swap; read-only outputs; real dtypes."""
import contextlib
import os
import re
import shutil
import signal
import subprocess

import numpy as np
import pytest
import torch

from pipeline.core import io as pio
from pipeline.core.io import (Interrupted, atomic_dir, check_writable, critical_section, interrupt_handler, load_npy,
                         load_npz, recover, reset_interrupts, sha256_file, torch_load, torch_save)


def test_torch_save_is_byte_stable_across_paths_and_runs(tmp_path):
    """The same state saved twice (each time through a different random temporary file) gives identical
    bytes, so DVC sees no change after an identical retrain; and it loads back with weights_only."""
    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3)}
    torch_save(tmp_path / "a" / "model.pt", state)
    torch_save(tmp_path / "b" / "model.pt", state)
    assert sha256_file(tmp_path / "a" / "model.pt") == sha256_file(tmp_path / "b" / "model.pt")
    loaded = torch_load(tmp_path / "a" / "model.pt")
    assert torch.equal(loaded["w"], state["w"])
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary left behind


# --- faults: interrupted writes, the folder swap, read-only outputs, non-real arrays (issue 15) -------------

def tree(folder):
    """Every file below ``folder`` with its bytes (what "byte-identical afterwards" compares)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@contextlib.contextmanager
def read_only(path):
    """Make the folder ``path`` refuse new entries, also for root (who ignores modes: the immutable flag)."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode:
            pytest.skip("cannot make a folder read-only as root here (no chattr +i)")
        undo = ["chattr", "-i", str(path)]
    else:
        mode = path.stat().st_mode
        path.chmod(0o555)
        undo = None
    try:
        try:
            (path / "probe").touch()
        except OSError:
            pass
        else:
            (path / "probe").unlink()
            pytest.skip("this file system ignores read-only folders")
        yield path
    finally:
        if undo:
            subprocess.run(undo, check=True)
        else:
            path.chmod(mode)


@pytest.fixture
def output(tmp_path):
    target = tmp_path / "models"
    (target / "seed_0").mkdir(parents=True)
    (target / "seed_0" / "model.pt").write_bytes(b"last good model")
    (target / "run.json").write_text("{}\n")
    return target


def test_temporaries_are_named_after_target_and_pid(output):
    with atomic_dir(output) as tmp:
        assert tmp.name.startswith(f".models.{os.getpid()}-") and tmp.name.endswith(".tmp")
        with pio.atomic_path(output.parent / "metrics.json") as f:
            assert f.name.startswith(f".metrics.json.{os.getpid()}-")


@pytest.mark.parametrize("leftover, stale", [
    ("pid_of_a_dead_process", True),   # SIGKILL / power cut: the next start removes it
    ("legacy_random_name", True),      # tempfile's name before temporaries carried a pid
    ("pid_of_this_process", False),    # a live writer's temporary is left alone
    ("other_target", False),           # `.models_v2.*.tmp` belongs to another target
])
def test_next_write_removes_stale_temporaries_of_its_target_only(output, leftover, stale):
    names = {"pid_of_a_dead_process": f".models.{dead_pid()}-k1ll3d_x.tmp", "legacy_random_name": ".models.ab3_x9zq.tmp",
             "pid_of_this_process": f".models.{os.getpid()}-l1v3xxxx.tmp",
             "other_target": f".models_v2.{dead_pid()}-0th3rxxx.tmp"}
    debris = output.parent / names[leftover]
    (debris / "seed_0").mkdir(parents=True)
    (debris / "seed_0" / "model.pt").write_bytes(b"half")
    with atomic_dir(output) as tmp:
        (tmp / "new").write_text("new")
    assert debris.exists() != stale
    assert tree(output) == {"new": b"new"}


def test_swap_exchanges_atomically_and_leaves_nothing(output):
    """The default swap is one renameat2(RENAME_EXCHANGE): models/ names a complete folder at every instant."""
    seen = []
    real_exchange = pio.exchange

    def watching(a, b):
        seen.append(tree(b))
        ok = real_exchange(a, b)
        seen.append(tree(b))
        return ok

    pio.exchange = watching
    try:
        with atomic_dir(output) as tmp:
            (tmp / "new").write_text("new")
    finally:
        pio.exchange = real_exchange
    if not real_exchange.__globals__["_renameat2"]:
        pytest.skip("renameat2 is not available here: the two-rename fallback is tested below")
    assert seen[0]["seed_0/model.pt"] == b"last good model" and seen[1] == {"new": b"new"}
    assert sorted(p.name for p in output.parent.iterdir()) == ["models"]


def test_failure_between_the_two_renames_is_restored_at_next_start(output, monkeypatch):
    """Where the file system cannot exchange, the swap is two renames; an I/O error between them leaves
    models/ missing and the last good copy in .models.old/: the next start puts it back, byte for byte."""
    before = tree(output)
    monkeypatch.setattr(pio, "exchange", lambda a, b: False)
    real_rename = os.rename

    def failing_second_rename(src, dst):
        if str(src).endswith(".tmp"):
            raise OSError(5, "Input/output error (injected)", str(dst))
        return real_rename(src, dst)

    monkeypatch.setattr(pio.os, "rename", failing_second_rename)
    with pytest.raises(OSError, match="injected"):
        with atomic_dir(output) as tmp:
            (tmp / "new").write_text("new")
    monkeypatch.setattr(pio.os, "rename", real_rename)
    assert not output.exists() and tree(output.parent / ".models.old") == before  # the window the issue found
    assert recover(output) == [f"restored {output} from {output.parent / '.models.old'}"]
    assert tree(output) == before
    assert sorted(p.name for p in output.parent.iterdir()) == ["models"]


def test_a_crash_after_both_renames_leaves_old_copy_removed_at_next_start(output):
    """Killed after the second rename, before .models.old was removed: models/ is the new, complete folder and
    the next start only removes the old copy."""
    old = output.parent / ".models.old"
    shutil.copytree(output, old)
    (output / "run.json").write_text('{"new": 1}\n')
    before = tree(output)
    assert recover(output) == [f"removed {old}"]
    assert tree(output) == before and not old.exists()


def test_two_rename_fallback_succeeds_and_cleans(output, monkeypatch):
    monkeypatch.setattr(pio, "exchange", lambda a, b: False)
    with atomic_dir(output) as tmp:
        (tmp / "new").write_text("new")
    assert tree(output) == {"new": b"new"}
    assert sorted(p.name for p in output.parent.iterdir()) == ["models"]


@pytest.fixture
def sigterm_raises():
    previous = signal.signal(signal.SIGTERM, interrupt_handler)
    reset_interrupts()
    yield
    signal.signal(signal.SIGTERM, previous)
    reset_interrupts()


def test_sigterm_in_the_body_removes_the_temporary_and_keeps_the_output(output, sigterm_raises):
    before = tree(output)
    with pytest.raises(Interrupted, match="SIGTERM"):
        with atomic_dir(output) as tmp:
            (tmp / "seed_0").mkdir()
            (tmp / "seed_0" / "model.pt").write_bytes(b"finished seed")
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10**6):  # the handler runs at the next bytecode boundary
                pass
    assert tree(output) == before
    assert sorted(p.name for p in output.parent.iterdir()) == ["models"]


def test_sigterm_during_the_swap_waits_until_it_completes(output, sigterm_raises):
    with pytest.raises(Interrupted):
        with critical_section():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10**5):
                pass
            reached_end = True
    assert reached_end
    os.kill(os.getpid(), signal.SIGTERM)  # after the first, a second signal does not cut the cleanup short
    for _ in range(10**5):
        pass


def test_read_only_output_is_refused_before_any_work_naming_the_folder(output):
    before = tree(output)
    with read_only(output / "seed_0"):
        with pytest.raises(PermissionError, match=r"seed_0 is not writable"):
            check_writable(output)
        ran = []
        with pytest.raises(PermissionError, match=r"seed_0 is not writable"):
            with atomic_dir(output):
                ran.append(True)
        assert not ran
    with read_only(output.parent):
        with pytest.raises(PermissionError, match=f"{output.parent} is not writable"):
            check_writable(output)
    assert tree(output) == before


@pytest.mark.parametrize("dtype", ["complex64", "complex128", "U3", "S3", "datetime64[s]"])
def test_loaders_refuse_non_real_arrays_naming_file_and_array(tmp_path, dtype):
    arr = np.zeros(3, dtype=dtype)
    np.savez(tmp_path / "data.npz", x=np.zeros(3, np.float32), y=arr)
    np.save(tmp_path / "a.npy", arr)
    with pytest.raises(ValueError, match=re.escape(f"data.npz: array 'y' has dtype {np.dtype(dtype)}")):
        load_npz(tmp_path / "data.npz")
    with pytest.raises(ValueError, match=re.escape(f"a.npy has dtype {np.dtype(dtype)}")):
        load_npy(tmp_path / "a.npy")


@pytest.mark.parametrize("dtype", ["bool", "int8", "uint16", "int64", "float16", "float32", "float64"])
def test_loaders_accept_real_arrays(tmp_path, dtype):
    np.savez(tmp_path / "data.npz", x=np.ones(3, dtype=dtype))
    assert load_npz(tmp_path / "data.npz")["x"].dtype == np.dtype(dtype)


def test_outputs_get_the_umask_mode_not_tempfiles_0600(tmp_path):
    """Atomic writes go through mkstemp/mkdtemp (0600/0700): the outputs must get what open()/mkdir() give."""
    import os

    from pipeline.core.io import atomic_dir, write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
        with atomic_dir(tmp_path / "figures") as folder:
            (folder / "f.png").write_bytes(b"png")
        os.umask(0o027)
        write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "figures").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o640
