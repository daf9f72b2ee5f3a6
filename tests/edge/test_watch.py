import os
import shutil

import pytest
import trio

from edge.watch import WatchPlan, plan_watch, serve_config_watch

# Real inotify events through real watchfiles threads: bounded waits, never timed assertions.
SEEN_TIMEOUT_S = 5.0
QUIET_S = 0.3  # after a burst, how long we listen for a (wrong) second notification

GATEWAY_V1 = "kind: Gateway\n# v1\n"
GATEWAY_V2 = "kind: Gateway\n# v2\n"


class Changes:
    """Collects the watcher's notifications; tests wait for the next one with a bound."""

    def __init__(self):
        self.batches: list[set[str]] = []
        self._send, self._receive = trio.open_memory_channel(100)

    def __call__(self, paths: set[str]) -> None:
        self.batches.append(paths)
        self._send.send_nowait(paths)

    async def next(self) -> set[str]:
        with trio.fail_after(SEEN_TIMEOUT_S):
            return await self._receive.receive()

    async def assert_quiet(self) -> None:
        with trio.move_on_after(QUIET_S):
            paths = await self._receive.receive()
            pytest.fail(f"unexpected notification {paths}")


def make_configmap(root, files: dict[str, str], version: str) -> None:
    """Lay out a directory the way the kubelet mounts a ConfigMap (atomic writer)."""
    data_dir = root / f"..{version}"
    data_dir.mkdir()
    for name, text in files.items():
        (data_dir / name).write_text(text)
    tmp_link = root / "..data_tmp"
    os.symlink(data_dir.name, tmp_link)
    os.rename(tmp_link, root / "..data")  # atomic swap, as the kubelet does
    for name in files:
        link = root / name
        if not link.is_symlink():
            os.symlink(os.path.join("..data", name), link)


def swap_configmap(root, files: dict[str, str], version: str) -> None:
    old = os.readlink(root / "..data")
    make_configmap(root, files, version)
    shutil.rmtree(root / old)


# ------------------------------------------------------------------------------------------- plan_watch


def test_plan_watches_directories_recursively_and_files_through_their_directory(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "sub").mkdir()
    single = tmp_path / "gw.yaml"
    single.write_text(GATEWAY_V1)
    plan = plan_watch([str(conf), str(conf / "sub"), str(single)])
    assert plan.recursive == (str(conf),)  # conf/sub is inside conf
    assert plan.flat == (str(tmp_path),)
    assert plan.names == {str(tmp_path): frozenset({"gw.yaml"})}


def test_plan_of_a_file_inside_a_watched_directory_adds_nothing(tmp_path):
    (tmp_path / "gw.yaml").write_text(GATEWAY_V1)
    plan = plan_watch([str(tmp_path), str(tmp_path / "gw.yaml")])
    assert plan.recursive == (str(tmp_path),)
    assert plan.flat == ()


def test_plan_of_a_symlinked_file_watches_the_link_and_its_target(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "gw.yaml").write_text(GATEWAY_V1)
    (tmp_path / "etc").mkdir()
    os.symlink(tmp_path / "real" / "gw.yaml", tmp_path / "etc" / "edge.yaml")
    plan = plan_watch([str(tmp_path / "etc" / "edge.yaml")])
    assert plan.names == {
        str(tmp_path / "etc"): frozenset({"edge.yaml"}),
        str(tmp_path / "real"): frozenset({"gw.yaml"}),
    }


@pytest.mark.parametrize(
    ("path", "relevant"),
    [
        ("/etc/edge/gw.yaml", True),
        ("/etc/edge/..data", True),
        ("/etc/edge/..data_tmp", True),
        ("/etc/edge/..2024_05_01_10_00_00.123", True),
        ("/etc/edge/other.yaml", False),
        ("/etc/edge/sub/gw.yaml", False),
        ("/etc/edgeX/gw.yaml", False),
        ("/srv/conf", True),
        ("/srv/conf/a/b/c.yaml", True),
        ("/srv/config/c.yaml", False),
        ("/srv/conf/.c.yaml.tmp", False),
        ("/srv/conf/.git/index", False),
        ("/srv/conf/..data", True),
        ("/srv/conf/..2024_05_01/c.yaml", True),
        ("/srv/conf/c.yml", True),
        ("/srv/conf/c.json", True),
        # What the loader never reads does not count (an access log written beside the config, issue 10 #13).
        ("/srv/conf/access.log", False),
        ("/srv/conf/sub/notes.txt", False),
        ("/srv/conf/gone-directory", True),  # no suffix and gone: it may have been a directory of configs
    ],
)
def test_relevance(path, relevant):
    plan = WatchPlan(recursive=("/srv/conf",), flat=("/etc/edge",), names={"/etc/edge": frozenset({"gw.yaml"})})
    assert plan.is_relevant(path) is relevant


# --------------------------------------------------------------------------------------- real watching


async def test_a_burst_of_writes_is_reported_once(tmp_path, nursery):
    config = tmp_path / "gw.yaml"
    config.write_text(GATEWAY_V1)
    changes = Changes()
    await nursery.start(serve_config_watch, [str(tmp_path)], changes)
    for i in range(10):
        config.write_text(f"{GATEWAY_V1}# edit {i}\n")
    assert str(config) in await changes.next()
    with trio.move_on_after(QUIET_S):
        while True:
            await changes.next()
    # Debounced: ten back-to-back writes are one notification; on a loaded machine a burst can straddle one
    # debounce boundary, never more.
    assert 1 <= len(changes.batches) <= 2, changes.batches



async def test_edits_further_apart_than_the_debounce_are_reported_each(tmp_path, nursery):
    config = tmp_path / "gw.yaml"
    config.write_text(GATEWAY_V1)
    changes = Changes()
    await nursery.start(serve_config_watch, [str(tmp_path)], changes)
    config.write_text(GATEWAY_V2)
    await changes.next()
    config.write_text(GATEWAY_V1)
    await changes.next()


async def test_an_atomic_rename_over_a_watched_file_is_seen_and_later_edits_too(tmp_path, nursery):
    config = tmp_path / "gw.yaml"
    config.write_text(GATEWAY_V1)
    changes = Changes()
    await nursery.start(serve_config_watch, [str(config)], changes)
    tmp = tmp_path / ".gw.yaml.tmp"
    tmp.write_text(GATEWAY_V2)
    os.rename(tmp, config)  # the old inode is gone: an inode watch would be deaf from here on
    assert str(config) in await changes.next()
    config.write_text(GATEWAY_V1)
    assert str(config) in await changes.next()


async def test_a_watched_file_ignores_its_neighbours(tmp_path, nursery):
    config = tmp_path / "gw.yaml"
    config.write_text(GATEWAY_V1)
    changes = Changes()
    await nursery.start(serve_config_watch, [str(config)], changes)
    (tmp_path / "unrelated.yaml").write_text("x: 1\n")
    await changes.assert_quiet()
    config.write_text(GATEWAY_V2)
    assert await changes.next() == {str(config)}


async def test_a_log_written_in_the_config_directory_is_ignored(tmp_path, nursery):
    """A file the loader does not read (an access log) can be written without end: no reload, ever."""
    (tmp_path / "gw.yaml").write_text(GATEWAY_V1)
    changes = Changes()
    await nursery.start(serve_config_watch, [str(tmp_path)], changes)
    log = tmp_path / "access.log"
    for i in range(20):
        with log.open("a") as f:
            f.write(f"line {i}\n")
    await changes.assert_quiet()
    (tmp_path / "gw.yaml").write_text(GATEWAY_V2)
    assert await changes.next() == {str(tmp_path / "gw.yaml")}


async def test_editor_swap_files_are_ignored(tmp_path, nursery):
    changes = Changes()
    await nursery.start(serve_config_watch, [str(tmp_path)], changes)
    (tmp_path / ".gw.yaml.swp").write_text("vim state")
    (tmp_path / "gw.yaml~").write_text("backup")
    await changes.assert_quiet()


@pytest.mark.parametrize("watch", ["directory", "file"])
async def test_a_configmap_symlink_swap_is_seen_again_and_again(tmp_path, nursery, watch):
    mount = tmp_path / "edge"
    mount.mkdir()
    make_configmap(mount, {"gw.yaml": GATEWAY_V1}, "2024_01_01_00_00_00.1")
    changes = Changes()
    watched = str(mount) if watch == "directory" else str(mount / "gw.yaml")
    await nursery.start(serve_config_watch, [watched], changes)
    for version in ("2024_01_01_00_00_00.2", "2024_01_01_00_00_00.3"):
        swap_configmap(mount, {"gw.yaml": f"{GATEWAY_V2}# {version}\n"}, version)
        seen = await changes.next()
        assert any(os.path.basename(p).startswith("..") for p in seen), seen
        assert (mount / "gw.yaml").read_text().endswith(f"# {version}\n")
