"""Hostile clients against `recommend.py --serve` (issue #32): each case sent to a live server, what came back,
and whether that is what the service promises; then the /click throughput of 8 clients.

    python scripts/hostile_service.py                        # a synthetic checkpoint, about a minute
    python scripts/hostile_service.py --load_model checkpoint/<run>/model_00009.pt
    python scripts/hostile_service.py --cases deep methods   # some cases only

The checkpoint, unless given: scripts/bench_recommend.py's untrained GRU4Rec over 37,500 synthetic item ids
(the RSC15 map's size; a ranking costs the same whatever the weights), saved as main.py saves. Servers are
recommend.py subprocesses: the main one on 127.0.0.1 with --k 5, one with small limits for the drip case
(--workers 2 --queue 2 --request_timeout 2), one on ::1 serving a 10-item model without --k. Cases:
* burst: 200 clients at once, each on a connection of its own -> every one answered 200;
* race: /click and /end of one live session at the same moment, 200 times -> /end finds it every time;
* resets: 50 clients that send a request and reset the connection -> at most a line each on stderr;
* drip: a body of Content-Length 60000 sent a byte every 0.5 s -> 408 at the deadline; 300 such clients
  at once -> the server's threads do not grow, those beyond --workers + --queue get 503 at once, and
  after the deadline the server answers again;
* deep: a 60 kB body nested 30,000 levels deep -> 400;
* methods: PUT, DELETE, HEAD -> JSON 405; /health?x=1 -> 200; a request without k -> the server's --k;
  --host ::1 with a 10-item model and no --k -> served, default k 10;
* long_ids: 11,000 /clicks with 65,400-character session ids -> 400 each, the server's memory unchanged.
Exit status 1 when a case fails. The throughput line: /click requests per second of 8 client threads (in
this process, so they share the machine with the server) on kept-alive connections and on a new connection
a request, with the load average it ran under.
"""
import argparse
import http.client
import json
import os
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from scripts.bench_recommend import make_checkpoint, synthetic_sessions  # noqa: E402

RECOMMEND = os.path.join(ROOT, 'recommend.py')
CASES = ('burst', 'race', 'resets', 'drip', 'deep', 'methods', 'long_ids')
DRIP_FLAGS = ('--workers', '2', '--queue', '2', '--request_timeout', '2')


# ---------------------------------------------------------------- a live server and its clients

def start_service(checkpoint, *flags):
    """`recommend.py --serve --port 0` in a subprocess: (process, (host, port)) once it says where it listens.
    Its stderr goes to a file (`errors_of`): a pipe nobody reads would stall a server that writes much."""
    handle, errors = tempfile.mkstemp(suffix='.stderr')
    os.close(handle)
    with open(errors, 'a') as stderr:
        process = subprocess.Popen([sys.executable, RECOMMEND, '--load_model', checkpoint, '--serve', '--port', '0',
                                    *flags], stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT)
    process.errors = errors
    line = process.start_line = process.stdout.readline()
    match = re.search(r'http://(?:\[([^\]]+)\]|([^:/\s]+)):(\d+)', line)
    if not match:
        process.wait(timeout=60)
        raise RuntimeError(f'recommend.py --serve did not start: {line}{errors_of(process)}')
    return process, (match.group(1) or match.group(2), int(match.group(3)))


def errors_of(process):
    with open(process.errors) as f:
        return f.read()


def stop_service(process):
    """SIGTERM, then wait: (the rest of its stdout, its stderr)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        out, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    errors = errors_of(process)
    os.remove(process.errors)
    return out, errors


def proc_status(pid, field):
    """A number of /proc/<pid>/status (Threads, VmRSS in kB), or None where there is no /proc."""
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        return None


def request(address, method, path, body=None, connection=None, timeout=30, headers=None):
    """(status, headers with lower-case names, the answer's parsed JSON or None) of one request, on
    `connection` (an http.client.HTTPConnection that stays open) or on a connection of its own."""
    own = connection is None
    connection = connection or http.client.HTTPConnection(*address, timeout=timeout)
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    try:
        connection.request(method, path, body=data, headers=headers or {})
        response = connection.getresponse()
        raw = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(raw) if raw else None
    finally:
        if own:
            connection.close()


def raw_connection(address, data=b''):
    sock = socket.create_connection(address, timeout=30)
    if data:
        sock.sendall(data)
    return sock


def read_answer(sock, timeout=30):
    """(status, parsed JSON body or None) of the answer on a raw socket, read until the server closes it or
    the body's Content-Length arrived; (None, None) if the connection ended without an answer."""
    sock.settimeout(timeout)
    data = b''
    try:
        while True:
            head, _, body = data.partition(b'\r\n\r\n')
            length = re.search(rb'(?i)content-length: *(\d+)', head)
            if _ and length and len(body) >= int(length.group(1)):
                break
            got = sock.recv(65536)
            if not got:
                break
            data += got
    except (ConnectionResetError, TimeoutError):
        pass
    match = re.match(rb'HTTP/1\.[01] (\d{3})', data)
    if not match:
        return None, None
    body = data.partition(b'\r\n\r\n')[2]
    try:
        return int(match.group(1)), json.loads(body) if body else None
    except ValueError:
        return int(match.group(1)), body.decode(errors='replace')


def reset(sock):
    """Close with a TCP reset (SO_LINGER 0) instead of the usual FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    sock.close()


def drip(sock, data, interval, max_seconds):
    """Send `data` a byte every `interval` seconds until the server answers (the socket turns readable) or
    max_seconds passed; (status, answer, seconds until the answer or the end)."""
    start = time.monotonic()
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    try:
        for i in range(int(max_seconds / interval)):
            if selector.select(interval):
                break
            try:
                sock.send(data[i % len(data):i % len(data) + 1])
            except OSError:
                break
        else:
            return None, None, time.monotonic() - start
    finally:
        selector.close()
    seconds = time.monotonic() - start
    return (*read_answer(sock, timeout=5), seconds)


def post_head(path, length):
    return (f'POST {path} HTTP/1.1\r\nHost: hostile\r\nContent-Type: application/json\r\n'
            f'Content-Length: {length}\r\n\r\n').encode()


def in_threads(n, target):
    """target(i) in n threads started together (a barrier), joined; their results in order."""
    barrier, results = threading.Barrier(n), [None] * n

    def run(i):
        barrier.wait(timeout=60)
        results[i] = target(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


# ---------------------------------------------------------------- the cases: rows (case, sent, came back, ok)

def case_burst(address, ids, n=200):
    def client(i):
        start = time.perf_counter()
        try:
            status = request(address, 'POST', '/recommend', {'items': [ids[i % len(ids)]], 'k': 5})[0]
        except OSError as err:
            status = type(err).__name__
        return status, time.perf_counter() - start

    results = in_threads(n, client)
    ok = sum(status == 200 for status, _ in results)
    failed = sorted({str(s) for s, _ in results if s != 200})
    return [('burst', f'{n} POST /recommend at once, a connection each',
             f'{ok}/{n} answered 200{", else " + ", ".join(failed) if failed else ""}; slowest '
             f'{max(t for _, t in results):.2f} s', ok == n)]


def case_race(address, ids, trials=200):
    connections = [http.client.HTTPConnection(*address, timeout=30) for _ in range(2)]
    lost = 0
    for t in range(trials):
        session = f'race-{t}'
        request(address, 'POST', '/click', {'session_id': session, 'item_id': ids[0]}, connections[0])
        calls = [('/click', {'session_id': session, 'item_id': ids[1]}), ('/end', {'session_id': session})]
        answers = in_threads(2, lambda i: request(address, 'POST', *calls[i], connections[i]))
        lost += answers[1][2] != {'ended': True}
        request(address, 'POST', '/end', {'session_id': session}, connections[0])
    for connection in connections:
        connection.close()
    return [('race', f'{trials} x /click and /end of one live session at once',
             f'/end found the session {trials - lost}/{trials} times', lost == 0)]


def settled_errors(process, timeout=5.0):
    """The server's stderr once it stopped growing for half a second (at most `timeout` seconds)."""
    text, deadline = errors_of(process), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = errors_of(process)
        if now == text:
            break
        text = now
    return text


def case_resets(process, address, ids, n=50):
    before = len(errors_of(process).splitlines())
    for i in range(n):
        body = json.dumps({'items': [ids[i % len(ids)]], 'k': 5}).encode()
        reset(raw_connection(address, post_head('/recommend', len(body)) + body))
    status = request(address, 'GET', '/health')[0]
    lines = settled_errors(process).splitlines()[before:]
    tracebacks = sum(line.startswith('Traceback') for line in lines)
    return [('resets', f'{n} clients: a /recommend, then a TCP reset before reading',
             f'{len(lines)} lines on stderr, {tracebacks} tracebacks; then /health {status}',
             len(lines) <= n and not tracebacks and status == 200)]


def case_drip(process, address, workers=2, queue=2, deadline=2.0, n=300):
    rows = []
    sock = raw_connection(address, post_head('/click', 60000))
    status, answer, seconds = drip(sock, b'{"session_id": "' + b'x' * 100, 0.5, deadline + 20)
    sock.close()
    rows.append(('drip', f'Content-Length 60000, a byte every 0.5 s (--request_timeout {deadline:g})',
                 f'{status} after {seconds:.1f} s', status == 408 and seconds < deadline + 2))
    threads_before = proc_status(process.pid, 'Threads')
    socks = [raw_connection(address, post_head('/click', 60000) + b'{') for _ in range(n)]
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
    answered, stop = [], time.monotonic() + deadline / 2       # within half the deadline: turned away at once
    while len(answered) < n - workers - queue and time.monotonic() < stop:
        for key, _ in selector.select(0.1):
            selector.unregister(key.fileobj)
            answered.append(key.fileobj)
    selector.close()
    statuses = [read_answer(sock, timeout=5)[0] for sock in answered]
    threads_during = proc_status(process.pid, 'Threads')
    during = request(address, 'GET', '/health')[0]
    for sock in socks:
        if sock not in answered:
            sock.close()
    time.sleep(0.5)
    after = request(address, 'GET', '/health')[0]
    for sock in answered:
        sock.close()
    refused = statuses.count(503)
    rows.append(('drip', f'{n} such clients at once (--workers {workers} --queue {queue})',
                 f'{refused} got 503 at once; server threads {threads_before} -> {threads_during}; '
                 f'/health {during} during, {after} once they left',
                 refused == n - workers - queue and threads_during == threads_before and during == 503
                 and after == 200))
    return rows


def case_deep(address):
    body = b'{"items": ' + b'[' * 30000 + b']' * 30000 + b'}'
    status, _, answer = request(address, 'POST', '/recommend', body)
    return [('deep', f'/recommend body of {len(body):,} bytes nested 30,000 levels',
             f'{status} {answer["error"][:60] if answer and "error" in answer else answer}', status == 400)]


def case_methods(address, ids, v6_address=None):
    rows = []
    for method, path in (('PUT', '/recommend'), ('DELETE', '/click'), ('HEAD', '/health')):
        status, headers, answer = request(address, method, path)
        json_reply = headers.get('content-type') == 'application/json' and (method == 'HEAD' or 'error' in answer)
        rows.append(('methods', f'{method} {path}', f'{status} {headers.get("content-type")}, Allow: '
                     f'{headers.get("allow")}', status == 405 and json_reply))
    status, _, answer = request(address, 'GET', '/health?x=1')
    rows.append(('methods', 'GET /health?x=1', f'{status}', status == 200))
    status, _, answer = request(address, 'POST', '/recommend', {'items': [ids[0]]})
    rows.append(('methods', 'POST /recommend without k (--k 5)', f'{status}, {len(answer.get("items", []))} items',
                 status == 200 and len(answer['items']) == 5))
    if v6_address:
        status, _, health = request(v6_address, 'GET', '/health')
        answer = request(v6_address, 'POST', '/recommend', {'items': []})[2]
        rows.append(('methods', f'--host ::1, a {health.get("items")}-item model, no --k: /health, /recommend '
                     f'without k', f'{status}, {len(answer.get("items", []))} items', status == 200
                     and len(answer.get('items', [])) == health['items']))
    return rows


def case_long_ids(process, address, ids, n=11000, clients=8):
    rss_before = proc_status(process.pid, 'VmRSS')

    def client(c):
        connection, statuses = http.client.HTTPConnection(*address, timeout=60), []
        for i in range(c, n, clients):
            session = f'{i:08d}' + 'x' * 65392
            statuses.append(request(address, 'POST', '/click', {'session_id': session, 'item_id': ids[i % len(ids)]},
                                    connection)[0])
        connection.close()
        return statuses

    statuses = [s for per in in_threads(clients, client) for s in per]
    rss_after = proc_status(process.pid, 'VmRSS')
    at_limit = request(address, 'POST', '/click', {'session_id': 's' * 256, 'item_id': ids[0]})[0]
    grown = None if rss_before is None else (rss_after - rss_before) / 1024
    return [('long_ids', f'{n:,} /clicks with 65,400-character session ids (and one of 256)',
             f'{statuses.count(400):,} got 400, the 256-byte id {at_limit}; server RSS '
             f'{rss_before and rss_before / 1024:.0f} -> {rss_after and rss_after / 1024:.0f} MiB',
             statuses.count(400) == n and at_limit == 200 and (grown is None or grown < 64))]


def throughput(address, ids, clients=8, per_client=250, keep_alive=True):
    """/click requests per second of `clients` threads, each with sessions of its own (10 clicks each)."""
    def client(c):
        connection = http.client.HTTPConnection(*address, timeout=60) if keep_alive else None
        for i in range(per_client):
            body = {'session_id': f'tp-{c}-{i // 10}', 'item_id': ids[(c * 7919 + i) % len(ids)], 'k': 20}
            status = request(address, 'POST', '/click', body, connection)[0]
            assert status == 200, status
        if connection:
            connection.close()

    start = time.perf_counter()
    in_threads(clients, client)
    return clients * per_client / (time.perf_counter() - start)


# ---------------------------------------------------------------- the command

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--load_model', help='a checkpoint of main.py (default: a synthetic untrained GRU4Rec)')
    p.add_argument('--n_items', type=int, default=37_500, help='items of the synthetic checkpoint')
    p.add_argument('--cases', nargs='+', choices=CASES, default=list(CASES))
    p.add_argument('--quick', action='store_true', help='2,000 long-id clicks instead of 11,000')
    p.add_argument('--race_trials', type=int, default=200, help='/click against /end trials of the race case')
    p.add_argument('--no_throughput', action='store_true', help='skip the throughput line')
    args = p.parse_args(argv)
    rows, servers = [], []
    with tempfile.TemporaryDirectory() as folder:
        ids, support, _ = synthetic_sessions(args.n_items, 2000)
        checkpoint = args.load_model or make_checkpoint('GRU4Rec', ids, support, folder)
        if args.load_model:
            from recommend import SessionRecommender
            ids = SessionRecommender.load(args.load_model).ids
        try:
            process, address = start_service(checkpoint, '--k', '5')
            servers.append(process)
            print(f'server {address[0]}:{address[1]}, {len(ids):,} items, load average '
                  f'{os.getloadavg()[0]:.2f}', flush=True)
            for case in args.cases:
                if case == 'burst':
                    rows += case_burst(address, ids)
                elif case == 'race':
                    rows += case_race(address, ids, args.race_trials)
                elif case == 'resets':
                    rows += case_resets(process, address, ids)
                elif case == 'drip':
                    small, small_address = start_service(checkpoint, *DRIP_FLAGS)
                    servers.append(small)
                    rows += case_drip(small, small_address)
                elif case == 'deep':
                    rows += case_deep(address)
                elif case == 'methods':
                    os.makedirs(os.path.join(folder, 'ten'))
                    ten = make_checkpoint('GRU4Rec', ids[:10], support[:10], os.path.join(folder, 'ten'))
                    v6 = None
                    if socket.has_ipv6:
                        six, v6 = start_service(ten, '--host', '::1')
                        servers.append(six)
                    rows += case_methods(address, ids, v6)
                elif case == 'long_ids':
                    rows += case_long_ids(process, address, ids, 2000 if args.quick else 11000)
                print(f'  {case}: {"ok" if all(r[3] for r in rows if r[0] == case) else "FAILED"}', flush=True)
            if not args.no_throughput:
                load = os.getloadavg()
                alive = throughput(address, ids)
                fresh = throughput(address, ids, keep_alive=False)
                load_after = os.getloadavg()
        finally:
            for server in servers:
                stop_service(server)
    print('\n| case | sent | came back | |\n|---|---|---|---|')
    for case, sent, got, ok in rows:
        print(f'| {case} | {sent} | {got} | {"pass" if ok else "FAIL"} |')
    if not args.no_throughput:
        print(f'\nthroughput: /click, 8 client threads in this process, {os.cpu_count()} cores: {alive:,.0f} '
              f'requests/s on kept-alive connections, {fresh:,.0f} requests/s on a new connection a request; '
              f'load average {load[0]:.2f} before, {load_after[0]:.2f} after (1 min)')
    failed = [r for r in rows if not r[3]]
    if failed:
        print(f'\n{len(failed)} case(s) failed', file=sys.stderr)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
