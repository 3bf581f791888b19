"""recommend.py --serve against hostile clients (issue #32): a burst of connections, /end racing /click, clients
that reset, clients that drip, deep nesting, other methods, the query string, IPv6, the default k, long
session ids, kept-alive connections.

The servers are recommend.py subprocesses (scripts/hostile_service.py's helpers) on scripts/bench_recommend.py's
untrained checkpoints of 60 and 10 items. Conditions are forced, not waited for: a server stopped while the
connections arrive, a click held inside its GRU step, a single worker whose answers come in order, stalled
clients against a short --request_timeout."""
import contextlib
import http.client
import os
import select
import signal
import socket
import threading
import time

import pytest
import torch

import recommend
from conftest import run_command
from recommend import SessionRecommender
from scripts.bench_recommend import make_checkpoint, synthetic_sessions
from scripts.hostile_service import (drip, errors_of, post_head, proc_status, raw_connection, read_answer, request,
                                     reset, start_service, stop_service)

SMALL = ('--workers', '1', '--queue', '1', '--request_timeout', '3')     # a server of its own per test


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp('service')
    ids, support, _ = synthetic_sessions(60, 2000)
    os.makedirs(folder / 'ten')
    return {'ids': ids, 'sixty': make_checkpoint('GRU4Rec', ids, support, str(folder)),
            'ten': make_checkpoint('GRU4Rec', ids[:10], support[:10], str(folder / 'ten'))}


@contextlib.contextmanager
def served(checkpoint, *flags):
    process, address = start_service(checkpoint, *flags)
    try:
        yield process, address
    finally:
        stop_service(process)


@pytest.fixture(scope='module')
def server(models):
    """The defaults."""
    with served(models['sixty']) as running:
        yield running


@pytest.fixture(scope='module')
def serial(models):
    """One worker, so connections are answered in the order they came; room for 64 waiting."""
    with served(models['sixty'], '--workers', '1', '--queue', '64', '--max_id_bytes', '16') as running:
        yield running


@pytest.fixture
def small(models):
    """One worker, one place in the queue, 3 s to send a request; no connection before the test's."""
    with served(models['sixty'], *SMALL) as running:
        yield running


def somaxconn():
    """The kernel's cap on a listen backlog (128 on Linux before 5.4 and on macOS, 4096 after)."""
    try:
        with open('/proc/sys/net/core/somaxconn') as f:
            return int(f.read())
    except (OSError, ValueError):
        return 128


def test_a_burst_of_200_connections_is_answered(server, models):
    """200 connections arrive while the server is stopped (SIGSTOP): the kernel completes the handshakes of
    as many as the listen backlog holds (it was 5: the rest were refused or retried seconds later); then
    every one gets its answer. Where the kernel caps backlogs below 200 (net.core.somaxconn), that many."""
    process, address = server
    socks = []
    n = min(200, somaxconn())
    process.send_signal(signal.SIGSTOP)
    try:
        for _ in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.connect_ex(address)
            socks.append(sock)
        pending, deadline = set(socks), time.monotonic() + 5
        while pending and time.monotonic() < deadline:
            pending -= set(select.select([], list(pending), [], 0.2)[1])
    finally:
        process.send_signal(signal.SIGCONT)
    try:
        assert not pending, f'{len(pending)} of {n} connections not established while the server was stopped'
        body = b'{"items": ["%s"], "k": 3}' % models['ids'][4].encode()
        for sock in socks:
            sock.setblocking(True)
            sock.sendall(post_head('/recommend', len(body)) + body)
        statuses = [read_answer(sock)[0] for sock in socks]
        assert statuses == [200] * n
    finally:
        for sock in socks:
            sock.close()


def test_end_during_a_click_is_not_lost(models):
    """/end while a click of the same session is inside its GRU step (held there until /end either waits for
    the session's lock or returns): the end comes after the click, never in the middle of it."""
    r = SessionRecommender.load(models['sixty'])
    r.click('s', r.ids[1])
    inside, release, contended = threading.Event(), threading.Event(), threading.Event()
    step = r.model.hidden_step

    def held_step(*args):
        inside.set()
        release.wait(10)
        return step(*args)

    class Watched:
        def __init__(self):
            self.lock = threading.Lock()

        def __enter__(self):
            if not self.lock.acquire(blocking=False):
                contended.set()
                self.lock.acquire()

        def __exit__(self, *exc):
            self.lock.release()

    r.session_locks = [Watched() for _ in r.session_locks]
    r.model.hidden_step = held_step
    results = {}
    clicker = threading.Thread(target=lambda: results.setdefault('click', r.click('s', r.ids[2])))
    clicker.start()
    assert inside.wait(10)
    ender = threading.Thread(target=lambda: results.setdefault('end', r.end('s')))
    ender.start()
    for _ in range(1000):                 # until /end waits for the click's lock, or returned without it
        if contended.is_set() or not ender.is_alive():
            break
        time.sleep(0.01)
    release.set()
    clicker.join(10)
    ender.join(10)
    assert results['end'] is True and 's' not in r.sessions and r.n_sessions == 0


def test_clients_that_reset_leave_at_most_a_line_each(serial, models):
    """50 clients reset their connection (half after a whole request, half in the middle of its body); with
    one worker, the answer to a later request comes after the worker finished with all of them."""
    process, address = serial
    before = len(errors_of(process).splitlines())
    for i in range(50):
        body = b'{"items": ["%s"], "k": 3}' % models['ids'][i].encode()
        reset(raw_connection(address, post_head('/recommend', len(body)) + body[:None if i % 2 else 10]))
    assert request(address, 'GET', '/health')[0] == 200
    lines = errors_of(process).splitlines()[before:]
    assert len(lines) <= 50 and not [line for line in lines if 'Traceback' in line], lines[:30]


def test_a_dripping_body_is_cut_at_the_deadline_and_a_full_server_says_503(small, models):
    process, address = small
    threads = proc_status(process.pid, 'Threads')
    dripping = raw_connection(address, post_head('/click', 60000) + b'{')      # the one worker reads it
    queued = raw_connection(address, b'GET /health HTTP/1.1\r\nHost: x\r\n\r\n')  # the one place in the queue
    status, _, answer = request(address, 'GET', '/health')                     # no room left: turned away
    assert status == 503 and 'busy' in answer['error']
    status, answer, seconds = drip(dripping, b'"session_id": "drip", ', 0.25, 15)
    assert status == 408 and 'within 3 s' in answer['error'] and seconds < 6  # not when 60000 bytes came
    assert read_answer(queued)[0] == 200                                       # served next
    if threads is not None:
        assert proc_status(process.pid, 'Threads') == threads                # the worker threads are fixed
    dripping.close()
    queued.close()


def test_dripping_headers_are_cut_at_the_deadline(small):
    _, address = small
    sock = raw_connection(address)
    status, answer, seconds = drip(sock, b'GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ' + b'z' * 200, 0.25, 15)
    assert status == 408 and seconds < 6
    sock.close()
    sock = raw_connection(address)                # one that sends nothing is closed at the deadline, unanswered
    start = time.monotonic()
    assert select.select([sock], [], [], 15)[0] and sock.recv(100) == b'' and time.monotonic() - start < 6
    sock.close()


def test_the_workers_are_bounded(small):
    """20 connections to a server of one worker and one place in the queue: 18 get 503 at once and the
    server starts no thread for them."""
    process, address = small
    threads = proc_status(process.pid, 'Threads')
    socks = [raw_connection(address, b'GET /health HTTP/1.1\r\nHost: x\r\n') for _ in range(20)]   # unfinished
    statuses = [read_answer(sock, timeout=10)[0] for sock in socks[2:]]
    assert statuses == [503] * 18
    if threads is not None:
        assert proc_status(process.pid, 'Threads') == threads
    for sock in socks:
        sock.close()


def test_a_deeply_nested_body_is_400(server):
    _, address = server
    for body in (b'{"items": ' + b'[' * 30000 + b']' * 30000 + b'}', b'{"a": ' * 9000 + b'1' + b'}' * 9000):
        status, _, answer = request(address, 'POST', '/recommend', body)
        assert status == 400 and 'nested' in answer['error'], answer


@pytest.mark.parametrize('method', ['PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD', 'BREW'])
def test_other_methods_get_a_json_405(server, method):
    _, address = server
    for path, allow in (('/recommend', 'POST'), ('/health', 'GET')):
        status, headers, answer = request(address, method, path)
        assert status == 405 and headers['content-type'] == 'application/json' and headers['allow'] == allow
        assert answer is None if method == 'HEAD' else f'{path} takes {allow}' in answer['error']
    assert request(address, method, '/nothing')[0] == 404


def test_the_query_string_is_ignored(server, models):
    _, address = server
    assert request(address, 'GET', '/health?x=1')[0] == 200
    status, _, answer = request(address, 'POST', '/recommend?debug=1', {'items': [models['ids'][3]], 'k': 4})
    assert status == 200 and len(answer['items']) == 4


def ipv6_loopback():
    """Whether ::1 can be bound here (containers often run without IPv6, whatever socket.has_ipv6 says)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(('::1', 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason='no IPv6 loopback (::1) on this machine')
def test_ipv6(models):
    with served(models['sixty'], '--host', '::1') as (process, address):
        assert address[0] == '::1' and request(address, 'GET', '/health')[0] == 200


def test_the_default_k(models):
    """Without --k, k 20 capped at the catalogue (a 10-item model serves 10); with --k 5, 5."""
    with served(models['ten']) as (process, address):
        assert len(request(address, 'POST', '/recommend', {'items': []})[2]['items']) == 10
        assert len(request(address, 'POST', '/recommend', {'items': [], 'k': 3})[2]['items']) == 3
        assert request(address, 'POST', '/recommend', {'items': [], 'k': 11})[0] == 400
    with served(models['sixty'], '--k', '5') as (process, address):
        status, _, answer = request(address, 'POST', '/click', {'session_id': 's', 'item_id': models['ids'][2]})
        assert status == 200 and len(answer['items']) == 5
        assert len(request(address, 'POST', '/recommend', {'items': [], 'k': 8})[2]['items']) == 8
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(recommend.InputError, match='--k must be in 1..10'):
            recommend.main(['--load_model', models['ten'], '--serve', '--k', '11'])
        assert torch.get_num_threads() == 2        # a refused command leaves the process as it was
    finally:
        torch.set_num_threads(threads)


def test_session_ids_are_length_limited(server, serial, models):
    item = models['ids'][5]
    for (_, address), limit in ((server, 256), (serial, 16)):
        connection = http.client.HTTPConnection(*address, timeout=30)
        for session_id, status in (('s' * limit, 200), ('s' * (limit + 1), 400), ('é' * (limit // 2), 200),
                                   ('é' * (limit // 2) + 's', 400)):
            got, _, answer = request(address, 'POST', '/click', {'session_id': session_id, 'item_id': item},
                                     connection)
            assert got == status, (limit, len(session_id), answer)
            assert status == 200 or f'at most {limit} bytes' in answer['error']
        assert request(address, 'POST', '/end', {'session_id': 's' * (limit + 1)}, connection)[0] == 400
        connection.close()


def test_connections_are_kept_alive(server, models):
    """HTTP/1.1: one connection for many requests, a bad body included; a body the server did not read (a
    PUT's) ends the connection, and the client opens the next."""
    _, address = server
    connection = http.client.HTTPConnection(*address, timeout=30)
    sock = None
    for body, status in (({'items': [models['ids'][1]]}, 200), (b'{"items": [', 400), ({'items': []}, 200)):
        got, headers, _ = request(address, 'POST', '/recommend', body, connection)
        assert got == status and 'close' not in headers.get('connection', '')
        assert sock is None or connection.sock is sock
        sock = connection.sock
    got, headers, _ = request(address, 'PUT', '/recommend', b'{"items": []}', connection)
    assert got == 405 and headers['connection'] == 'close'
    assert request(address, 'GET', '/health', connection=connection)[0] == 200 and connection.sock is not sock
    connection.close()


def test_an_idle_kept_alive_connection_makes_room(models):
    """One worker, held by a kept-alive connection that sends nothing more: a request that comes is answered
    at once (the idle connection is closed for it), not after the 10 s --request_timeout."""
    with served(models['sixty'], '--workers', '1', '--queue', '4') as (_, address):
        idle = http.client.HTTPConnection(*address, timeout=30)
        assert request(address, 'GET', '/health', connection=idle)[0] == 200
        start = time.monotonic()
        assert request(address, 'GET', '/health')[0] == 200 and time.monotonic() - start < 3
        assert select.select([idle.sock], [], [], 5)[0] and idle.sock.recv(10) == b''     # closed by the server
        idle.close()


def test_http_1_0_keep_alive(server):
    """An HTTP/1.0 client keeps its connection only when it asks and the answer says so."""
    _, address = server
    sock = raw_connection(address)
    for _ in range(2):
        sock.sendall(b'GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n')
        head = sock.recv(65536).partition(b'\r\n\r\n')[0].lower()
        assert head.startswith(b'http/1.1 200') and b'connection: keep-alive' in head
    sock.close()
    sock = raw_connection(address, b'GET /health HTTP/1.0\r\n\r\n')
    assert read_answer(sock)[0] == 200 and sock.recv(10) == b''
    sock.close()


def test_limits_in_the_start_line_and_help(serial, capsys):
    line = serial[0].start_line
    for words in ('--workers 1', '--queue 64', '--request_timeout 10', '--max_body_bytes 65,536',
                  '--max_id_bytes 16', '--max_sessions 10,000'):
        assert words in line, line
    with pytest.raises(SystemExit):
        recommend.parse_args(['--help'])
    help_text = capsys.readouterr().out
    for flag in ('--workers', '--queue', '--request_timeout', '--max_body_bytes', '--max_id_bytes', '--max_sessions'):
        assert flag in help_text


def test_the_hostile_script_runs(tmp_path):
    """scripts/hostile_service.py itself, on a small model and its cheap cases."""
    result = run_command('scripts/hostile_service.py', '--n_items', '60', '--cases', 'deep', 'methods', 'race',
                         '--race_trials', '20', '--no_throughput')
    assert result.returncode == 0, result.stdout + result.stderr
    assert '| deep |' in result.stdout and '| methods | PUT /recommend | 405' in result.stdout
    assert 'FAIL' not in result.stdout
