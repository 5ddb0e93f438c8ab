"""The agent's services against real bash subprocesses and a real file system.

Scripts: output capture with sequence numbers, exit codes, arguments and files, cancel killing the
whole process group, the isolation mutex (serialisation and timeout), idempotent StartScript,
CompleteScript cleanup, an agent restart. Files: SHA-1, atomic placement, the path policy.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import os
import uuid
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from hypothesis import given
from hypothesis import strategies as st

from octopus_comms.halibut.contracts import (
    CancelScriptCommandV2,
    CompleteScriptCommand,
    CompleteScriptCommandV2,
    ProcessOutputSource,
    ProcessState,
    ScriptFile,
    ScriptIsolationLevel,
    ScriptStatusRequest,
    ScriptStatusRequestV2,
    ScriptTicket,
    ScriptType,
    StartScriptCommand,
    StartScriptCommandV2,
    UploadResult,
)
from octopus_comms.halibut.messages import DataStream
from tentacle.services import Call, ServiceError, StreamSpool
from tentacle.services.files import FileTransferService, PathPolicy
from tentacle.services.mutex import IsolationMutexes, MutexTimeout, TaskLock
from tentacle.services.scripts import (
    CANCELED_EXIT_CODE,
    SHELL_ERROR_EXIT_CODE,
    TIMEOUT_EXIT_CODE,
    UNKNOWN_RESULT_EXIT_CODE,
    UNKNOWN_SCRIPT_EXIT_CODE,
    ScriptRunner,
    ScriptServiceV1,
    ScriptServiceV2,
    Shells,
    choose_script,
)
from tentacle.services.workspace import ScriptLog, Workspaces, encrypt_for_scripts

SECONDS = _dt.timedelta(seconds=1)


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def spool(tmp_path: Path) -> StreamSpool:
    return StreamSpool(tmp_path / "home" / "Temp" / "Incoming")


@pytest.fixture
def runner(tmp_path: Path, nursery: trio.Nursery) -> ScriptRunner:
    return ScriptRunner(Workspaces(tmp_path / "home" / "Work"), IsolationMutexes(), nursery,
                        shells=Shells(bash="/bin/bash", pwsh=None), output_grace=0.5)


@pytest.fixture
def v2(runner: ScriptRunner) -> ScriptServiceV2:
    return ScriptServiceV2(runner)


def start_command(body: str, ticket: str | None = None, **kw: object) -> StartScriptCommandV2:
    return StartScriptCommandV2(script_ticket=ScriptTicket(task_id=ticket or uuid.uuid4().hex),
                                script_body=body, **kw)


async def run_to_end(v2: ScriptServiceV2, command: StartScriptCommandV2, call: Call | None = None):
    """Start and wait for the end; all logs from sequence 0."""
    await v2.start_script(call or Call(), command)
    with trio.fail_after(20):
        await v2.runner.wait(command.script_ticket.task_id, 20)
    return await v2.get_status(Call(), ScriptStatusRequestV2(ticket=command.script_ticket))


async def until(predicate, timeout: float = 10.0) -> None:
    """Poll a condition the test cannot be told about (a subprocess's side effect)."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


def texts(logs, source=None) -> list[str]:
    return [line.text for line in logs if source is None or line.source == source]


def process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


# -- scripts ------------------------------------------------------------------------------------


async def test_output_is_captured_line_by_line_with_sequences_and_utc_times(v2):
    before = _dt.datetime.now(_dt.timezone.utc) - SECONDS
    status = await run_to_end(v2, start_command(
        "echo one\necho two >&2\nprintf 'three\\r\\nfour'\necho five\nexit 3\n"))
    after = _dt.datetime.now(_dt.timezone.utc) + SECONDS
    assert status.state == ProcessState.Complete
    assert status.exit_code == 3
    assert texts(status.logs, ProcessOutputSource.StdOut) == ["one", "three", "fourfive"]
    assert texts(status.logs, ProcessOutputSource.StdErr) == ["two"]
    assert status.next_log_sequence == 4
    assert all(before <= line.occurred <= after and line.occurred.tzinfo is not None
               for line in status.logs)


async def test_get_status_returns_only_logs_after_the_last_sequence(v2):
    command = start_command("for i in 1 2 3 4 5; do echo line$i; done")
    await run_to_end(v2, command)
    tail = await v2.get_status(Call(), ScriptStatusRequestV2(ticket=command.script_ticket, last_log_sequence=3))
    assert texts(tail.logs) == ["line4", "line5"]
    assert tail.next_log_sequence == 5
    nothing = await v2.get_status(Call(), ScriptStatusRequestV2(ticket=command.script_ticket, last_log_sequence=5))
    assert nothing.logs == [] and nothing.next_log_sequence == 5


async def test_arguments_and_working_directory(v2, runner):
    command = start_command('echo "$#:$1:$2"; pwd', arguments=["a b", "c"])
    status = await run_to_end(v2, command)
    assert texts(status.logs) == ["2:a b:c", str(runner.workspaces.directory_for(command.script_ticket.task_id))]


async def test_start_script_waits_for_a_quick_script_when_asked(v2):
    quick = await v2.start_script(Call(), start_command(
        "echo done", duration_to_wait_for_script_to_finish=_dt.timedelta(seconds=10)))
    assert quick.state == ProcessState.Complete and texts(quick.logs) == ["done"]
    slow = await v2.start_script(Call(), start_command(
        "sleep 30", duration_to_wait_for_script_to_finish=_dt.timedelta(milliseconds=100)))
    assert slow.state in (ProcessState.Pending, ProcessState.Running)


async def test_cancel_kills_the_whole_process_group(v2, tmp_path):
    pids = tmp_path / "pids"
    command = start_command(f"sleep 300 & echo $! > {pids}.child\necho $$ > {pids}\nwait\n")
    await v2.start_script(Call(), command)
    await until(lambda: Path(f"{pids}.child").exists() and pids.exists() and pids.read_text().strip())
    shell_pid, sleep_pid = int(pids.read_text()), int(Path(f"{pids}.child").read_text())
    status = await v2.cancel_script(Call(), CancelScriptCommandV2(ticket=command.script_ticket))
    assert status.state == ProcessState.Complete
    assert status.exit_code == CANCELED_EXIT_CODE == -43
    assert texts(status.logs)[-1] == "Script execution canceled."
    await until(lambda: process_gone(shell_pid) and process_gone(sleep_pid), timeout=5)


async def test_full_isolation_serialises_scripts_under_one_mutex(v2, tmp_path):
    trace, release = tmp_path / "trace", tmp_path / "release"
    first = start_command(f"echo A-start >> {trace}\nwhile [ ! -e {release} ]; do sleep 0.02; done\n"
                          f"echo A-end >> {trace}",
                          task_id="ServerTasks-1", isolation=ScriptIsolationLevel.FullIsolation,
                          isolation_mutex_name="deploy")
    second = start_command(f"echo B >> {trace}", task_id="ServerTasks-2",
                           isolation=ScriptIsolationLevel.FullIsolation, isolation_mutex_name="deploy")
    other = start_command("echo other", task_id="ServerTasks-3",
                          isolation=ScriptIsolationLevel.FullIsolation, isolation_mutex_name="elsewhere")
    await v2.start_script(Call(), first)
    await until(lambda: trace.exists())
    waiting = await v2.start_script(Call(), second.__class__(**{**second.__dict__,
                                    "duration_to_wait_for_script_to_finish": _dt.timedelta(seconds=0.5)}))
    assert waiting.state == ProcessState.Pending
    assert texts(waiting.logs) == [
        "Cannot start this task yet because task [ServerTasks-1](~/app#/tasks/ServerTasks-1) (RW) "
        "is currently running and this task cannot be run in conjunction with any other tasks. "
        "Please wait..."]
    assert (await run_to_end(v2, other)).exit_code == 0  # another mutex name is not blocked
    release.touch()
    done = await run_to_end(v2, second)
    assert done.exit_code == 0
    assert trace.read_text().split() == ["A-start", "A-end", "B"]


async def test_no_isolation_scripts_run_side_by_side(v2, tmp_path):
    gate = tmp_path / "gate"
    a = start_command(f"touch {gate}.a; while [ ! -e {gate}.b ]; do sleep 0.02; done")
    b = start_command(f"touch {gate}.b; while [ ! -e {gate}.a ]; do sleep 0.02; done")
    await v2.start_script(Call(), a)
    await v2.start_script(Call(), b)
    assert (await run_to_end(v2, a)).exit_code == 0
    assert (await run_to_end(v2, b)).exit_code == 0


async def test_a_mutex_timeout_fails_the_script_with_the_real_message(v2, tmp_path):
    release = tmp_path / "release"
    holder = start_command(f"while [ ! -e {release} ]; do sleep 0.02; done", task_id="ServerTasks-7",
                           isolation=ScriptIsolationLevel.FullIsolation)
    await v2.start_script(Call(), holder)
    await until(lambda: v2.runner.get(holder.script_ticket.task_id).state == ProcessState.Running)
    waiter = start_command("echo never", task_id="ServerTasks-8", isolation=ScriptIsolationLevel.FullIsolation,
                           script_isolation_mutex_timeout=_dt.timedelta(milliseconds=300))
    status = await run_to_end(v2, waiter)
    assert status.exit_code == TIMEOUT_EXIT_CODE == -44
    assert texts(status.logs)[1:] == [
        "This task waited more than 0 minutes and timed out. "
        "Task [ServerTasks-7](~/app#/tasks/ServerTasks-7) (RW) is still running.",
        "Script execution timed out.",
    ]
    release.touch()
    assert (await run_to_end(v2, holder)).exit_code == 0


async def test_start_script_is_idempotent_on_the_ticket(v2, runner, tmp_path):
    counter = tmp_path / "runs"
    command = start_command(f"echo run >> {counter}; echo hello")
    first = await run_to_end(v2, command)
    again = await v2.start_script(Call(), command)
    assert again.state == ProcessState.Complete and again.exit_code == 0
    assert texts(again.logs) == texts(first.logs) == ["hello"]
    assert counter.read_text() == "run\n"
    # completed and forgotten: still never run again
    await v2.complete_script(Call(), CompleteScriptCommandV2(ticket=command.script_ticket))
    late = await v2.start_script(Call(), command)
    assert late.state == ProcessState.Complete and late.exit_code == UNKNOWN_RESULT_EXIT_CODE
    assert counter.read_text() == "run\n"


async def test_concurrent_duplicate_starts_run_once(v2, tmp_path):
    counter = tmp_path / "runs"
    command = start_command(f"echo run >> {counter}")
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(v2.start_script, Call(), command)
    await run_to_end(v2, command)
    assert counter.read_text() == "run\n"


async def test_complete_script_deletes_the_work_directory_and_forgets_the_ticket(v2, runner):
    command = start_command("echo x > made-here.txt")
    await run_to_end(v2, command)
    directory = runner.workspaces.directory_for(command.script_ticket.task_id)
    assert (directory / "made-here.txt").exists() and (directory / "Script.sh").exists()
    assert await v2.complete_script(Call(), CompleteScriptCommandV2(ticket=command.script_ticket)) is None
    assert not directory.exists()
    assert runner.get(command.script_ticket.task_id) is None


async def test_complete_script_kills_a_script_still_running(v2, runner, tmp_path):
    pid_file = tmp_path / "pid"
    command = start_command(f"echo $$ > {pid_file}; exec sleep 300")
    await v2.start_script(Call(), command)
    await until(lambda: pid_file.exists() and pid_file.read_text().strip())
    await v2.complete_script(Call(), CompleteScriptCommandV2(ticket=command.script_ticket))
    await until(lambda: process_gone(int(pid_file.read_text())), timeout=5)


async def test_unknown_ticket(v2):
    unknown = ScriptStatusRequestV2(ticket=ScriptTicket(task_id="nope"), last_log_sequence=7)
    status = await v2.get_status(Call(), unknown)
    assert status.state == ProcessState.Complete
    assert status.exit_code == UNKNOWN_SCRIPT_EXIT_CODE == -45
    assert status.next_log_sequence == 7


async def test_files_are_written_into_the_work_directory_before_the_script_runs(v2, spool):
    plain = DataStream.from_bytes(b"plain text\n")
    secret = DataStream.from_bytes("pa\u00df=word\n".encode())
    call = Call()
    for stream in (plain, secret):
        assert stream.data is not None
        call.received[stream.id] = await spool.spool_bytes(stream, stream.data)
    command = start_command(
        "cat data.txt; head -c 4 secret.bin; echo",
        files=[ScriptFile(name="data.txt", contents=plain),
               ScriptFile(name="secret.bin", contents=secret, encryption_password="hunter2")])
    status = await run_to_end(v2, command, call)
    assert texts(status.logs) == ["plain text", "IV__"]
    stored = (v2.runner.workspaces.directory_for(command.script_ticket.task_id) / "secret.bin").read_bytes()
    assert decrypt_like_calamari(stored, "hunter2") == "pa\u00df=word\n"
    call.cleanup()
    assert list(spool.directory.iterdir()) == []


def decrypt_like_calamari(data: bytes, password: str) -> str:
    """Calamari's AesEncryption.Decrypt, written from its description (an independent check)."""
    assert data[:4] == b"IV__"
    key = PBKDF2HMAC(algorithm=hashes.SHA1(), length=16, salt=b"Octopuss", iterations=1000).derive(password.encode())
    decryptor = Cipher(algorithms.AES(key), modes.CBC(data[4:20])).decryptor()
    padded = decryptor.update(data[20:]) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return (unpadder.update(padded) + unpadder.finalize()).decode()


async def test_a_script_file_name_must_be_plain(v2, spool):
    stream = DataStream.from_bytes(b"x")
    call = Call(received={stream.id: await spool.spool_bytes(stream, b"x")})
    with pytest.raises(ServiceError, match="plain file name"):
        await v2.start_script(call, start_command("true", files=[ScriptFile(name="../evil", contents=stream)]))


async def test_powershell_without_pwsh_is_a_clear_error(v2):
    status = await run_to_end(v2, start_command("", scripts={ScriptType.PowerShell: "Write-Host hi"}))
    assert status.exit_code == SHELL_ERROR_EXIT_CODE == -42
    assert "PowerShell (pwsh) is not installed" in texts(status.logs, ProcessOutputSource.StdErr)[0]


def test_which_shell_runs_a_script():
    assert choose_script("echo", {}) == (ScriptType.Bash, "echo")
    assert choose_script("x", {ScriptType.Bash: "b", ScriptType.PowerShell: "p"}) == (ScriptType.Bash, "b")
    assert choose_script("x", {ScriptType.PowerShell: "p"}) == (ScriptType.PowerShell, "p")
    assert choose_script("x", {1: "b"}) == (ScriptType.Bash, "b")


async def test_v1_contract_start_status_complete(runner, tmp_path):
    v1 = ScriptServiceV1(runner)
    ticket = await v1.start_script(Call(), StartScriptCommand(script_body="echo a; echo b; exit 4"))
    assert isinstance(ticket, ScriptTicket) and ticket.task_id
    with trio.fail_after(20):
        await runner.wait(ticket.task_id, 20)
    status = await v1.get_status(Call(), ScriptStatusRequest(ticket=ticket, last_log_sequence=1))
    assert texts(status.logs) == ["b"] and status.exit_code == 4
    final = await v1.complete_script(Call(), CompleteScriptCommand(ticket=ticket, last_log_sequence=0))
    assert texts(final.logs) == ["a", "b"] and final.state == ProcessState.Complete
    assert not runner.workspaces.directory_for(ticket.task_id).exists()


async def test_a_restarted_agent_answers_from_the_workspace_and_never_reruns(tmp_path, nursery, v2):
    counter = tmp_path / "runs"
    command = start_command(f"echo run >> {counter}; echo out; exit 5")
    await run_to_end(v2, command)
    restarted = ScriptServiceV2(ScriptRunner(Workspaces(tmp_path / "home" / "Work"), IsolationMutexes(),
                                             nursery, shells=Shells(pwsh=None)))
    status = await restarted.start_script(Call(), command)
    assert status.state == ProcessState.Complete and status.exit_code == 5
    assert texts(status.logs) == ["out"]
    assert counter.read_text() == "run\n"


async def test_large_logs_come_in_pieces_and_complete_only_at_the_end(tmp_path, nursery):
    runner = ScriptRunner(Workspaces(tmp_path / "Work"), IsolationMutexes(), nursery,
                          shells=Shells(pwsh=None), max_read_bytes=2000)
    v2 = ScriptServiceV2(runner)
    command = start_command("for i in $(seq 1 300); do echo line-$i; done")
    await run_to_end(v2, command)
    seen: list[str] = []
    sequence = 0
    for _ in range(100):
        status = await v2.get_status(Call(), ScriptStatusRequestV2(ticket=command.script_ticket,
                                                                    last_log_sequence=sequence))
        seen += texts(status.logs)
        sequence = status.next_log_sequence
        if status.state == ProcessState.Complete:
            break
        assert status.state == ProcessState.Running
    assert seen == [f"line-{i}" for i in range(1, 301)]


def test_unsafe_tickets_do_not_become_paths(tmp_path):
    workspaces = Workspaces(tmp_path / "Work")
    for ticket in ("../../etc", "a/b", "..", "", "x" * 500, "tab\tbed"):
        directory = workspaces.directory_for(ticket)
        assert directory.parent == workspaces.root
        assert directory.name.startswith("ticket-")
    assert workspaces.directory_for("ServerTasks-1_abc.2").name == "ServerTasks-1_abc.2"


# -- the script log -----------------------------------------------------------------------------


@given(lines=st.lists(st.text(max_size=40), max_size=40), after=st.integers(-3, 45),
       max_bytes=st.integers(1, 400))
def test_script_log_reads_after_any_sequence_in_pieces(tmp_path_factory, lines, after, max_bytes):
    log = ScriptLog(tmp_path_factory.mktemp("log") / "Output.log")
    log.INDEX_EVERY = 4  # exercise the sparse index
    now = _dt.datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=_dt.timezone.utc)
    for i, text in enumerate(lines):
        assert log.append(ProcessOutputSource(i % 3), text, now) == i + 1
    got: list[str] = []
    sequence = after
    while True:
        chunk, sequence_next, complete = log.read(sequence, max_bytes=max_bytes)
        assert chunk or complete
        got += [line.text for line in chunk]
        assert all(line.occurred == now for line in chunk)
        sequence = sequence_next
        if complete:
            break
    assert got == lines[max(after, 0):]
    assert sequence == max(after, len(lines), 0)
    log.close()


def test_script_log_survives_a_restart_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "Output.log"
    log = ScriptLog(path)
    stamp = _dt.datetime(2024, 1, 1, tzinfo=_dt.timezone.utc)
    for i in range(600):
        log.append(ProcessOutputSource.StdOut, f"l{i}", stamp)
    log.close()
    with open(path, "ab") as file:
        file.write(b'[0, 1, "torn')
    reopened = ScriptLog(path)
    assert reopened.count == 600
    lines, next_sequence, complete = reopened.read(597)
    assert [line.text for line in lines] == ["l597", "l598", "l599"] and next_sequence == 600 and complete
    assert reopened.append(ProcessOutputSource.StdErr, "after", stamp) == 601
    assert reopened.read(600)[0][0].text == "after"


def test_encryption_matches_the_independent_decryption():
    data = encrypt_for_scripts("Octopus=1\n", "p@ss", iv=bytes(16))
    assert decrypt_like_calamari(data, "p@ss") == "Octopus=1\n"


# -- the isolation mutex ------------------------------------------------------------------------


async def test_mutex_is_first_come_first_served_so_writers_are_not_starved():
    lock = TaskLock()
    order: list[str] = []
    release_reader = trio.Event()

    async def hold(owner: str, exclusive: bool, until: trio.Event | None = None) -> None:
        async with lock.hold(owner, exclusive=exclusive, timeout=10):
            order.append(owner)
            if until is not None:
                await until.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, "r1", False, release_reader)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(hold, "w", True)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(hold, "r2", False)  # must queue behind the writer
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["r1"] and lock.waiting == 2
        release_reader.set()
    assert order == ["r1", "w", "r2"]


async def test_a_waiter_that_gives_up_unblocks_those_behind_it():
    lock = TaskLock()
    messages: list[str] = []
    async with lock.hold("r1", exclusive=False, timeout=1):
        with pytest.raises(MutexTimeout):
            async with lock.hold("w", exclusive=True, timeout=0.05, initial_wait=0.01,
                                 on_message=messages.append):
                pass
        with trio.fail_after(1):  # a reader is not stuck behind the writer that timed out
            async with lock.hold("r2", exclusive=False, timeout=1):
                assert set(lock.readers) == {"r1", "r2"}
    assert lock.readers == () and lock.writer is None and lock.waiting == 0
    assert messages[0].startswith("Cannot start this task yet because task [r1](~/app#/tasks/r1) (R) is")
    assert messages[1] == ("This task waited more than 0 minutes and timed out. "
                           "Task [r1](~/app#/tasks/r1) (R) is still running.")


async def test_mutex_messages_for_several_holders_and_cancel():
    lock = TaskLock()
    messages: list[str] = []
    async with lock.hold("b", exclusive=False, timeout=1), lock.hold("a", exclusive=False, timeout=1):
        with trio.move_on_after(0.2):
            async with lock.hold("w", exclusive=True, timeout=10, initial_wait=0.01, on_message=messages.append):
                pass
    assert messages == [
        "Cannot start this task yet because tasks [a](~/app#/tasks/a) (R) and [b](~/app#/tasks/b) (R) "
        "are currently running and this task cannot be run in conjunction with any other tasks. Please wait...",
        "This task was canceled before it could start. Tasks [a](~/app#/tasks/a) (R) and "
        "[b](~/app#/tasks/b) (R) are still running.",
    ]
    assert lock.waiting == 0


def test_mutex_registry_default_name():
    mutexes = IsolationMutexes()
    assert mutexes.get(None) is mutexes.get("RunningScript")
    assert mutexes.get("a") is not mutexes.get("A")


# -- file transfer ------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir(exist_ok=True)
    return tmp_path / "home"


@pytest.fixture
def files(home: Path, tmp_path: Path) -> FileTransferService:
    return FileTransferService(PathPolicy(home / "Files", [home, tmp_path / "apps"]))


async def upload(files: FileTransferService, spool: StreamSpool, path: str, data: bytes) -> UploadResult:
    stream = DataStream.from_bytes(data)
    call = Call(received={stream.id: await spool.spool_bytes(stream, data)})
    try:
        return await files.upload_file(call, path, stream)
    finally:
        call.cleanup()


async def test_upload_returns_path_sha1_and_length_and_writes_the_file(files, spool, home):
    data = os.urandom(200_000)
    result = await upload(files, spool, "packages/app.1.0.0.zip", data)
    assert result == UploadResult(full_path=str(home / "Files" / "packages" / "app.1.0.0.zip"),
                                  hash=hashlib.sha1(data).hexdigest(), length=len(data))
    assert result.hash == result.hash.lower() and len(result.hash) == 40
    assert Path(result.full_path).read_bytes() == data
    assert list(spool.directory.iterdir()) == []  # moved, not copied


async def test_upload_replaces_atomically_and_allows_absolute_paths_under_the_roots(files, spool, home, tmp_path):
    target = tmp_path / "apps" / "site" / "web.config"
    await upload(files, spool, str(target), b"old")
    result = await upload(files, spool, str(target), b"new!")
    assert target.read_bytes() == b"new!" and result.length == 4
    assert [p.name for p in target.parent.iterdir()] == ["web.config"]  # no temporary left


@pytest.mark.parametrize("path", ["../escape.txt", "a/../../b", "/etc/passwd", "/tmp/x", "", "   ",
                                  "bad\0name", "/", "."])
async def test_upload_refuses_unsafe_paths(files, spool, path):
    with pytest.raises(ServiceError, match=r"Refusing|empty|NUL"):
        await upload(files, spool, path, b"x")


async def test_a_symlink_cannot_lead_outside_the_roots(files, spool, home, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (home / "Files").mkdir(parents=True, exist_ok=True)
    (home / "Files" / "link").symlink_to(outside)
    with pytest.raises(ServiceError, match="Refusing"):
        await upload(files, spool, "link/file.txt", b"x")
    assert list(outside.iterdir()) == []
    (outside / "secret").write_text("s")
    (home / "Files" / "secret-link").symlink_to(outside / "secret")
    with pytest.raises(ServiceError):
        await files.download_file(Call(), "secret-link")


async def test_download_streams_the_file_from_disk(files, spool, home):
    data = os.urandom(100_000)
    await upload(files, spool, "big.bin", data)
    call = Call()
    stream = await files.download_file(call, "big.bin")
    assert stream.length == len(data) and stream.data is None
    outgoing = call.outgoing[stream.id]
    assert outgoing.file.read() == data
    call.cleanup()
    assert outgoing.file.closed


async def test_download_errors(files, home):
    with pytest.raises(ServiceError, match=f"File not found: {home / 'Files' / 'missing.txt'}"):
        await files.download_file(Call(), "missing.txt")
    (home / "Files" / "dir").mkdir(parents=True)
    with pytest.raises(ServiceError, match="not a regular file"):
        await files.download_file(Call(), "dir")


async def test_spool_checks_the_declared_length(spool):
    stream = DataStream(id=uuid.uuid4(), length=5)
    writer = spool.open(stream)
    await writer.write(b"abc")
    with pytest.raises(ServiceError, match="ended after 3 of 5"):
        await writer.finish()
    writer.discard()
    writer = spool.open(stream)
    with pytest.raises(ServiceError, match="more than"):
        await writer.write(b"abcdef")
    writer.discard()
    assert list(spool.directory.iterdir()) == []


def test_spool_removes_leftovers_of_a_previous_run(tmp_path):
    directory = tmp_path / "spool"
    directory.mkdir()
    (directory / "dead.part").write_bytes(b"x")
    StreamSpool(directory)
    assert list(directory.iterdir()) == []


def test_outgoing_file_read_is_exact():
    call = Call()
    stream = call.send_file(io.BytesIO(b"abc"), 3)
    assert call.outgoing[stream.id].stream is stream


async def test_an_upload_that_cannot_be_written_is_a_clear_error(files, spool, home):
    (home / "Files").mkdir(parents=True, exist_ok=True)
    (home / "Files" / "plain").write_text("a file, not a directory")
    with pytest.raises(ServiceError, match="Cannot write"):
        await upload(files, spool, "plain/inside.txt", b"x")
