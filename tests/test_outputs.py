"""The output guard and the save-folder lock, as units (the scripts use them in test_bad_input.py)."""
import os
import subprocess
import sys

import pytest

from src.utils.errors import UserError
from src.utils.outputs import (
    MANIFEST,
    FolderLock,
    OutputGuard,
    folder_kept_only_if_used,
    not_our_outputs,
    written_by_us,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_new_files_may_be_written_and_are_recorded_after(tmp_path):
    out = tmp_path / "sub" / "a.json"
    guard = OutputGuard()
    guard.file(str(out))
    assert not (tmp_path / "sub").exists()  # checks write nothing: the folder is made by claim()
    guard.claim()
    assert (tmp_path / "sub").is_dir()
    assert written_by_us(str(out)) is False  # nothing there yet
    out.write_text("[]")
    assert written_by_us(str(out))  # pending: a killed run's half-written file stays ours
    guard.record([str(out)])
    assert written_by_us(str(out))
    out.write_text("[1]")  # changed by the user since: theirs now
    assert not written_by_us(str(out))
    with pytest.raises(UserError, match="not written by this project"):
        OutputGuard().file(str(out))


def test_folders_are_made_at_claim_and_removed_if_nothing_was_written(tmp_path):
    guard = OutputGuard()
    guard.folder(str(tmp_path / "a" / "b" / "save"))
    guard.folder(str(tmp_path / "logs"))
    guard.claim()
    assert (tmp_path / "a" / "b" / "save").is_dir() and guard.created == [str(tmp_path / "a"), str(tmp_path / "logs")]
    (tmp_path / "a" / "b" / "save" / ".train.lock").write_text("")  # a lock alone is nothing written
    (tmp_path / "logs" / "events").write_text("x")
    guard.remove_empty_created()
    assert not (tmp_path / "a").exists() and (tmp_path / "logs" / "events").exists()


def test_a_failed_download_leaves_no_folder_it_made(tmp_path):
    (tmp_path / "hub").mkdir()
    with pytest.raises(OSError):
        with folder_kept_only_if_used(str(tmp_path / "hub" / "cache" / "checkpoints")):
            raise OSError("offline")
    assert os.listdir(tmp_path / "hub") == []  # made and removed; the folder that was there stays
    with folder_kept_only_if_used(str(tmp_path / "hub" / "cache" / "checkpoints")):
        pass
    assert (tmp_path / "hub" / "cache" / "checkpoints").is_dir()  # kept when the body succeeds


def test_an_output_through_a_missing_folder_is_checked_where_it_lands(tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"mine")
    with pytest.raises(UserError, match="is an input"):
        OutputGuard([str(photo)]).file(str(tmp_path / "nodir" / ".." / "photo.jpg"))
    with pytest.raises(UserError, match="not written by this project"):
        OutputGuard().file(str(tmp_path / "nodir" / ".." / "photo.jpg"))
    guard = OutputGuard()
    out = tmp_path / "new" / ".." / "out" / "a.json"
    guard.file(str(out))
    guard.claim()  # makes new/ and out/, as the kernel needs them to open the path as given
    out.write_text("[]")
    assert (tmp_path / "out" / "a.json").read_text() == "[]"
    assert sorted(guard.created) == [str(tmp_path / "new"), str(tmp_path / "out")]


def test_a_pending_claim_does_not_take_a_file_older_than_itself(tmp_path):
    """A run that claimed a name and died before writing it must not make a user's file of that
    name, older than the claim, look like ours."""
    out = tmp_path / "a.jpg"
    out.write_bytes(b"user's")
    os.utime(out, ns=(1_000_000_000, 1_000_000_000))  # long before
    (tmp_path / MANIFEST).write_text('{"files": {"a.jpg": {"pending": true, "since_ns": 1500000000000000000}}}')
    assert not written_by_us(str(out))
    os.utime(out)  # written now, after the claim: a killed run's half-written file
    assert written_by_us(str(out))


def test_inputs_are_caught_through_symlinks_and_hard_links(tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"x")
    os.symlink(photo, tmp_path / "soft.jpg")
    os.link(photo, tmp_path / "hard.jpg")
    guard = OutputGuard([str(photo)])
    for name in ["photo.jpg", "soft.jpg", "hard.jpg"]:
        with pytest.raises(UserError, match="is an input"):
            guard.file(str(tmp_path / name))
    with pytest.raises(UserError, match="a folder this command reads"):
        OutputGuard([str(tmp_path)]).folder(str(tmp_path / "." / ""))


def test_two_outputs_on_one_file_are_refused(tmp_path):
    guard = OutputGuard()
    guard.file(str(tmp_path / "a.jpg"))
    with pytest.raises(UserError, match="another output of this command goes there too"):
        guard.files([str(tmp_path / "b.jpg"), str(tmp_path / "x" / ".." / "a.jpg")])


def test_the_manifest_itself_is_never_an_output(tmp_path):
    with pytest.raises(UserError, match="record of what it wrote"):
        OutputGuard().file(str(tmp_path / MANIFEST))


def test_our_earlier_outputs_are_not_new_inputs(tmp_path):
    guard = OutputGuard()
    mine, theirs = tmp_path / "a_prediction.jpg", tmp_path / "a.jpg"
    guard.file(str(mine))
    mine.write_bytes(b"drawn")
    theirs.write_bytes(b"photo")
    guard.record([str(mine)])
    assert not_our_outputs([str(theirs), str(mine)]) == [str(theirs)]


def test_the_lock_is_held_by_one_process_and_dies_with_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys; from src.utils.outputs import FolderLock; FolderLock(sys.argv[1]).acquire();"
        " print('held', flush=True);"
        " sys.stdin.read()"), str(tmp_path)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match=rf"in use by another training run \(pid {holder.pid} on "):
        FolderLock(str(tmp_path)).acquire()
    holder.kill()
    holder.wait(timeout=60)
    lock = FolderLock(str(tmp_path)).acquire()
    assert lock.taken_over.startswith(f"pid {holder.pid} on ")  # a killed holder leaves a note, not a stuck lock
    lock.release()
    again = FolderLock(str(tmp_path)).acquire()
    assert again.taken_over is None
    again.release()


def test_a_save_folder_made_inside_a_dataset_root_is_not_a_dataset_folder_next_time(tmp_path):
    """The first run made it; the second (a resume) must not be refused for writing where it wrote."""
    from src.data.formats import dataset_folders
    root = tmp_path / "data"
    (root / "train2017").mkdir(parents=True)
    (root / "train2017" / "1.jpg").write_bytes(b"jpeg")
    (root / "empty").mkdir()
    save, logs = root / "run", root / "tb"
    save.mkdir()
    logs.mkdir()
    FolderLock(str(save)).acquire().release()  # what a run leaves: its lock file
    (logs / "events.out.tfevents.1.host").write_bytes(b"")
    folders = {os.path.basename(f) for f in dataset_folders(str(root))}
    assert "train2017" in folders
    assert not folders & {"run", "tb", "empty"}
    guard = OutputGuard(dataset_folders(str(root)))
    guard.folder(str(save), "--save-folder")
    with pytest.raises(UserError, match="a folder this command reads"):
        guard.folder(str(root / "train2017"), "--save-folder")
