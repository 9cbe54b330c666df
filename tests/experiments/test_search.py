"""`python -m emnist_utils search` with several worker processes on one Optuna study (issue 21, items 6-7).

Journal file (always): two workers finish exactly N trials, a second run of the same command trains nothing, and
the trial of a worker killed with SIGKILL is failed and retried by the next run. PostgreSQL (a throwaway server
from tests/pg_server.py; skipped where PostgreSQL is not installed): three workers in two commands share a study
without running anything twice, a killed worker's trial is failed by its stale heartbeat and retried while another
worker goes on, and the mistakes a user can make (an unreachable server, a wrong password, an unknown study, a bad
search-space value) each give one `error:` line, exit 2 and train nothing.

Every worker is a real `python -m emnist_utils search` process (nothing is patched in them) on the stand-in data
with the smoke profile, so trial counts are kept small.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from helpers import PROJECT_ROOT, STANDIN_DIR
from optuna.trial import TrialState
from pg_server import free_port, postgres  # noqa: F401 - postgres is a fixture

from emnist_utils.experiments.search import FINISHED, REPORT_SPACE, journal_path, open_storage, open_study

pytestmark = pytest.mark.skipif(not STANDIN_DIR.is_dir(), reason=f"stand-in data not found at {STANDIN_DIR}")

USER_ATTRS = ("key", "epochs_trained", "compute_s")
DONE = re.compile(r"^study (\S+): (\d+) trials finished \((\d+) by this command\)$", re.M)


# ----------------------------------------------------------------------------- running the command line


def search_command(study: str, trials: int, *extra: str, jobs: int = 1, storage: str | None = None) -> list[str]:
    command = [sys.executable, "-m", "emnist_utils", "search", "--study", study, "--trials", str(trials)]
    command += ["--jobs", str(jobs), "--profile", "smoke", "--data", str(STANDIN_DIR), "--split", "standin"]
    return command + (["--storage", storage] if storage else []) + list(extra)


def start(command: list[str], cache: Path) -> subprocess.Popen:
    """The command as its own process group (so that a kill reaches its worker processes too), with `cache` as
    its EMNIST_CACHE and no other EMNIST_* setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMNIST_")}
    env.update(EMNIST_CACHE=str(cache), EMNIST_OUTPUT=str(cache.parent / f"{cache.name}-output"))
    return subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    """Wait for the command; kill it (and its workers) and fail the test when it takes longer than `timeout`."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(proc.args[2:])} still running after {timeout:.0f} s\nstdout:\n{out}\nstderr:\n{err}")
    return proc.returncode, out, err


@pytest.fixture
def launched():
    """Start commands with `launched(command, cache)`; any still running when the test ends are killed."""
    procs = []

    def launch(command, cache):
        procs.append(start(command, cache))
        return procs[-1]

    yield launch
    for proc in procs:
        if proc.poll() is None:
            kill_group(proc)
            proc.communicate()


def finished_line(out: str) -> tuple[int, int]:
    """(trials the study has finished, trials this command finished) from the command's last report."""
    found = DONE.findall(out)
    assert len(found) == 1, out
    return int(found[0][1]), int(found[0][2])


def assert_quiet(err: str) -> None:
    """A command that did its job writes nothing to stderr (no warnings either)."""
    assert err == "", f"stderr of a successful command:\n{err}"


def trained_keys(cache: Path) -> list[str]:
    """The runs a cache holds (`runs/KEY.json`)."""
    return sorted(p.stem for p in (cache / "runs").glob("*.json"))


def trials_of(storage, study: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials as the storage has them now ([] while the study does not exist yet)."""
    try:
        return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return []


def wait_for(condition, timeout: float, what: str, procs=()):
    """Poll `condition()` until it returns something truthy (returned); fail the test after `timeout` s or when
    one of `procs` stops first."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        for proc in procs:
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"a worker stopped (exit {proc.returncode}) before {what}\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def running_trial_of(storage, study: str, pid: int):
    """A RUNNING trial of worker process `pid` that has started training (its run's key is recorded)."""
    for t in trials_of(storage, study):
        if (
            t.state == TrialState.RUNNING
            and t.user_attrs.get("worker", "").endswith(f":{pid}")
            and "key" in t.user_attrs
        ):
            return t
    return None


def assert_finished_once(trials, n: int) -> list[optuna.trial.FrozenTrial]:
    """Exactly `n` finished trials, each with its key, epochs and compute, none numbered, parametrised or keyed like
    another; returns them."""
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == n, [(t.number, t.state.name) for t in trials]
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    for t in finished:
        assert set(USER_ATTRS) <= set(t.user_attrs), (t.number, t.user_attrs)
        assert t.user_attrs["epochs_trained"] == 1 and t.user_attrs["compute_s"] > 0, (t.number, t.user_attrs)
    keys = [t.user_attrs["key"] for t in finished]
    assert len(set(keys)) == n, keys
    params = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(params)) == n, params
    return finished


# ----------------------------------------------------------------------------- journal file (one machine)

JOURNAL_TRIALS = 3


@pytest.fixture(scope="module")
def journal_search(tmp_path_factory):
    """One `--jobs 2` search of JOURNAL_TRIALS trials on the default journal file: (command, cache, output)."""
    cache = tmp_path_factory.mktemp("journal") / "cache"
    command = search_command("two-workers", JOURNAL_TRIALS, "--space", "report", jobs=2)
    proc = start(command, cache)
    rc, out, err = finish(proc, timeout=300)
    assert rc == 0, err
    return command, cache, out, err


def test_journal_two_workers_finish_exactly_n_trials(journal_search):
    _, cache, out, err = journal_search
    assert finished_line(out) == (JOURNAL_TRIALS, JOURNAL_TRIALS)
    storage = open_storage(None, root=cache)
    finished = assert_finished_once(trials_of(storage, "two-workers"), JOURNAL_TRIALS)
    assert {t.state for t in finished} == {TrialState.COMPLETE}  # tpe: nothing is pruned
    # Each finished trial trained its own run, once, in this machine's cache; nothing else was trained.
    assert trained_keys(cache) == sorted(t.user_attrs["key"] for t in finished)
    assert journal_path(cache).is_file()
    assert_quiet(err)


def test_journal_rerun_trains_nothing(journal_search):
    command, cache, _, _ = journal_search
    storage = open_storage(None, root=cache)
    before_trials = [(t.number, t.state) for t in trials_of(storage, "two-workers")]
    before_runs = {p: p.stat().st_mtime_ns for p in (cache / "runs").glob("*.json")}
    assert len(before_runs) == JOURNAL_TRIALS

    rc, out, err = finish(start(command, cache), timeout=180)

    assert rc == 0, err
    assert f"{JOURNAL_TRIALS} of {JOURNAL_TRIALS} trials finished" in out.splitlines()[0]
    assert finished_line(out) == (JOURNAL_TRIALS, 0)
    assert {p: p.stat().st_mtime_ns for p in (cache / "runs").glob("*.json")} == before_runs
    assert [(t.number, t.state) for t in trials_of(open_storage(None, root=cache), "two-workers")] == before_trials
    assert_quiet(err)


def test_journal_worker_killed_mid_trial_is_failed_and_retried(tmp_path, launched):
    cache = tmp_path / "cache"
    command = search_command("killed", 2, "--space", "report", jobs=1)
    proc = launched(command, cache)  # --jobs 1: the command is the worker
    storage = wait_for(
        lambda: journal_path(cache).is_file() and open_storage(None, root=cache), 120, "the journal", [proc]
    )
    victim = wait_for(lambda: running_trial_of(storage, "killed", proc.pid), 120, "a running trial", [proc])
    kill_group(proc)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    # Nobody has failed it yet: a journal has no heartbeat; the next worker on this machine finds it dead.
    after_kill = {t.number: t for t in trials_of(open_storage(None, root=cache), "killed")}
    assert after_kill[victim.number].state == TrialState.RUNNING
    assert not [t for t in after_kill.values() if t.state in FINISHED]

    rc, out, err = finish(launched(command, cache), timeout=180)

    assert rc == 0, err
    assert finished_line(out) == (2, 2)
    trials = trials_of(open_storage(None, root=cache), "killed")
    dead = next(t for t in trials if t.number == victim.number)
    assert dead.state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1, [(t.number, t.state.name, t.system_attrs) for t in trials]
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE
    assert retry.params == dead.params and retry.user_attrs["key"] == dead.user_attrs["key"]
    assert retry.user_attrs["worker"] != dead.user_attrs["worker"]  # the second command's process ran it
    finished = assert_finished_once(trials, 2)
    assert [t.state for t in trials if t not in finished] == [TrialState.FAIL]
    assert trained_keys(cache) == sorted(t.user_attrs["key"] for t in finished)
    assert_quiet(err)


# ----------------------------------------------------------------------------- PostgreSQL (many machines)


def test_postgres_three_workers_in_two_commands_share_one_study(postgres, tmp_path, launched):  # noqa: F811
    url, n = postgres.url(postgres.create_database()), 3
    storage = open_storage(url)
    # The study exists before the commands start: two commands creating one study at the same instant is
    # another matter (see the report on open_study).
    open_study("shared", storage, space="report")
    machines = [tmp_path / "machine1", tmp_path / "machine2"]  # a cache each, as on two machines
    first = launched(search_command("shared", n, "--space", "report", jobs=1, storage=url), machines[0])
    second = launched(search_command("shared", n, "--space", "report", jobs=2, storage=url), machines[1])

    results = [finish(first, timeout=300), finish(second, timeout=300)]

    for rc, _, err in results:
        assert rc == 0, err
    reports = [finished_line(out) for _, out, _ in results]
    assert [total for total, _ in reports] == [n, n]
    assert sum(mine for _, mine in reports) == n  # every finished trial counted by exactly one command
    finished = assert_finished_once(trials_of(storage, "shared"), n)
    assert {t.state for t in finished} == {TrialState.COMPLETE}
    # Every run was trained exactly once, on one machine or the other, and it is a finished trial's.
    trained = trained_keys(machines[0]) + trained_keys(machines[1])
    assert sorted(trained) == sorted(t.user_attrs["key"] for t in finished)
    for _, _, err in results:
        assert_quiet(err)


def test_postgres_killed_worker_trial_failed_by_heartbeat_and_retried(postgres, tmp_path, launched):  # noqa: F811
    url, n = postgres.url(postgres.create_database()), 2
    storage = open_storage(url)
    open_study("heartbeat", storage, space="report")
    command = search_command("heartbeat", n, jobs=1, storage=url)
    doomed = launched(command, tmp_path / "machine1")
    survivor = launched(command, tmp_path / "machine2")

    def all_slots_taken_and_doomed_training():
        # Kill once every one of the n slots is taken (finished or running), one by the doomed worker's trial:
        # from then on only the heartbeat can give the survivor its last trial.
        trials = trials_of(storage, "heartbeat")
        active = [t for t in trials if t.state in FINISHED or t.state == TrialState.RUNNING]
        return len(active) >= n and running_trial_of(storage, "heartbeat", doomed.pid)

    victim = wait_for(all_slots_taken_and_doomed_training, 180, "every trial slot taken", [doomed, survivor])
    kill_group(doomed)
    killed_at = time.monotonic()
    doomed.communicate()
    assert doomed.returncode == -signal.SIGKILL

    # The survivor finishes the study alone: the dead trial's heartbeat goes stale after the grace period (30 s),
    # the trial is failed and queued again with the same parameters, and the survivor runs it.
    rc, out, err = finish(survivor, timeout=180)

    waited = time.monotonic() - killed_at
    assert rc == 0, err
    trials = trials_of(storage, "heartbeat")
    dead = next(t for t in trials if t.number == victim.number)
    assert dead.state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1, [(t.number, t.state.name, t.system_attrs) for t in trials]
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    assert retry.user_attrs["key"] == dead.user_attrs["key"]
    assert retry.user_attrs["worker"].endswith(f":{survivor.pid}")
    finished = assert_finished_once(trials, n)
    assert [t.state for t in trials if t not in finished] == [TrialState.FAIL]
    by_doomed = sum(t.user_attrs["worker"].endswith(f":{doomed.pid}") for t in finished)
    assert finished_line(out) == (n, n - by_doomed)
    assert waited >= 30  # failed by the heartbeat's grace period, not sooner
    assert_quiet(err)
    print(f"trial {dead.number} died with worker {doomed.pid}; trial {retry.number} retried it, {waited:.0f} s later")


# ----------------------------------------------------------------------------- mistakes: one line, nothing trained

ERROR_CASES = {
    # name: (storage, study, extra arguments)
    "journal-unknown-study": ("journal", "nosuch", ()),
    "journal-unknown-space": ("journal", "new", ("--space", "nonsense")),
    "journal-off-grid": ("journal", "new", ("--space", "report", "--enqueue", "model.c1=12")),
    "journal-not-a-number": ("journal", "new", ("--space", "report", "--enqueue", "recipe.lr=abc")),
    "postgres-unreachable": ("closed-port", "new", ("--space", "report")),
    "postgres-wrong-password": ("wrong-password", "new", ("--space", "report")),
    "postgres-unknown-study": ("postgres", "nosuch", ()),
}


def expected_error(name: str, url: str | None) -> tuple[str, str]:
    """(the start of the one stderr line, text it contains) for an error case."""
    redacted = re.sub(r":[^:@/]+@", ":***@", url or "")
    study_space = "search space 'report'"
    return {
        "unknown-study": (
            "error: no study named 'nosuch' in this storage (studies there: other); create it with --space NAME",
            "",
        ),
        "unknown-space": ("error: unknown search space 'nonsense'; choose one of report, beyond", ""),
        "off-grid": (
            f"error: model.c1=12 is outside {study_space} ({REPORT_SPACE.parameters['model.c1']})",
            "",
        ),
        "not-a-number": (
            f"error: recipe.lr='abc' is not a value of {study_space} ({REPORT_SPACE.parameters['recipe.lr']})",
            "",
        ),
        "unreachable": (f"error: cannot use the study storage {redacted}: ", "Connection refused"),
        "wrong-password": (
            f"error: cannot use the study storage {redacted}: ",
            'password authentication failed for user "postgres"',
        ),
    }[name.split("-", 1)[1]]


@pytest.fixture(scope="module")
def error_runs(request, tmp_path_factory):
    """Every error case's command, all at once (each in its own cache): {name: (url, cache, rc, stdout, stderr)},
    or {name: reason} for the cases skipped because PostgreSQL is missing."""
    try:
        server = request.getfixturevalue("postgres")
        skipped = None
    except pytest.skip.Exception as exc:
        server, skipped = None, str(exc.msg)
    procs, runs = {}, {}
    for name, (kind, study, extra) in ERROR_CASES.items():
        cache = tmp_path_factory.mktemp(name) / "cache"
        if kind == "journal":
            url = None
        elif kind == "closed-port":
            url = f"postgresql+psycopg2://postgres:not-the-password@127.0.0.1:{free_port()}/emnist"
        elif server is None:
            runs[name] = skipped
            continue
        elif kind == "wrong-password":
            url = server.url(server.create_database(), password="wrong-secret")
        else:
            url = server.url(server.create_database())
        if study == "nosuch":  # a storage holding another study, which the message lists
            open_study("other", open_storage(url, root=cache), space="report")
        procs[name] = url, cache, start(search_command(study, 2, *extra, storage=url), cache)
    try:
        for name, (url, cache, proc) in procs.items():
            runs[name] = (url, cache, *finish(proc, timeout=180))
    finally:
        for _, _, proc in procs.values():
            if proc.poll() is None:
                kill_group(proc)
                proc.communicate()
    return runs


@pytest.mark.parametrize("name", ERROR_CASES)
def test_mistake_gives_one_error_line_and_trains_nothing(error_runs, name):
    if isinstance(error_runs[name], str):
        pytest.skip(error_runs[name])
    url, cache, rc, out, err = error_runs[name]
    start_of_line, contains = expected_error(name, url)
    assert rc == 2, err
    assert out == ""
    assert trained_keys(cache) == []
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    if contains:
        assert errors[0].startswith(start_of_line) and contains in errors[0], errors[0]
        assert "not-the-password" not in err and "wrong-secret" not in err  # no password in messages
    else:
        assert errors[0] == start_of_line
    if ERROR_CASES[name][0] in ("journal", "postgres"):  # nothing was queued or run in the storage either
        storage = open_storage(url, root=cache)
        assert [t for s in optuna.get_all_study_summaries(storage) for t in trials_of(storage, s.study_name)] == []
    assert err.splitlines() == errors, f"stderr has more than the error line:\n{err}"
