#!/usr/bin/env python3
"""gRPC load against `hcn serve` with the official Python client (grpcio), for SERVING.md.

Stubs are generated from proto/hcn/v1/prerank.proto at start (grpcio-tools, into a temp dir).
Requests are SPEC §4 JSON lines (e.g. `hcn bench --write-requests`, as scripts/serve_bench.sh does,
or weights/requests.jsonl), sent with top_k and return_scores=false. Each message is serialized once
at start and sent as bytes (the client spends no CPU re-encoding the same request: it shares the
machine with the server); answers are left as bytes. The server's own split of each answer's time
(the `x-receive-time-us` / `x-queue-time-us` / `x-inference-time-us` trailers) is reported next to the client's latency.
Open-loop latency counts from each request's scheduled arrival (no coordinated omission).

  closed  N clients, each sending back to back: latency percentiles and max QPS
  open    Poisson arrivals at RATE per second for SECONDS: latency percentiles, errors
  ping    one client calling Info back to back: the round trip of the client and the transport
          alone (no engine), the floor under every Score latency

Every loop is bounded in count and time; loopback only. Prints one JSON line.
"""
import argparse, json, os, random, sys, tempfile, threading, time


def stubs():
    from grpc_tools import protoc
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "proto")
    out = tempfile.mkdtemp(prefix="hcn-grpc-")
    rc = protoc.main(["protoc", f"-I{root}", f"--python_out={out}", f"--grpc_python_out={out}",
                      os.path.join(root, "hcn/v1/prerank.proto")])
    if rc != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)
    from hcn.v1 import prerank_pb2, prerank_pb2_grpc  # noqa: E402
    return prerank_pb2, prerank_pb2_grpc


def load_requests(path, pb, top_k, limit):
    reqs = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            reqs.append(pb.ScoreRequest(long=r.get("long", []), short=r.get("short", []),
                                        fields=r.get("fields", {}), dense=r.get("dense", []),
                                        candidates=r["candidates"], top_k=top_k).SerializeToString())
            if len(reqs) >= limit:
                break
    return reqs


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["closed", "open", "ping"])
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument("--requests-file")
    ap.add_argument("--top-k", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--count", type=int, default=200, help="requests per client (closed)")
    ap.add_argument("--rate", type=float, default=100.0, help="arrivals per second (open)")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration (open)")
    ap.add_argument("--max-requests-loaded", type=int, default=200)
    args = ap.parse_args()
    import grpc
    pb, _ = stubs()
    reqs = [] if args.mode == "ping" else load_requests(args.requests_file, pb, args.top_k,
                                                        args.max_requests_loaded)
    opts = [("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", 1 << 30)]
    lat, errors, lock = [], [], threading.Lock()
    receive_us, queue_us, inference_us = [], [], []
    late = []  # open loop: how far behind its schedule the client sent each request

    def score_call(ch):
        # Bytes in, bytes out: no protobuf work per call on the client.
        return ch.unary_unary("/hcn.v1.Prerank/Score")

    def timings(call):
        md = dict(call.trailing_metadata() or ())
        with lock:
            if "x-receive-time-us" in md:
                receive_us.append(int(md["x-receive-time-us"]))
            if "x-queue-time-us" in md:
                queue_us.append(int(md["x-queue-time-us"]))
            if "x-inference-time-us" in md:
                inference_us.append(int(md["x-inference-time-us"]))

    def one(stub, r):
        t = time.perf_counter()
        try:
            _, call = stub.with_call(r, timeout=30)
            ok = True
        except grpc.RpcError as e:
            ok = False
            with lock:
                errors.append(str(e.code()))
        dt = time.perf_counter() - t
        if ok:
            timings(call)
            with lock:
                lat.append(dt)

    if args.mode == "ping":
        ch = grpc.insecure_channel(args.target, options=opts)
        info = ch.unary_unary("/hcn.v1.Prerank/Info")
        for _ in range(20):
            info(b"", timeout=30)
        start = time.perf_counter()
        for _ in range(args.count):
            t = time.perf_counter()
            info(b"", timeout=30)
            lat.append(time.perf_counter() - t)
        wall = time.perf_counter() - start
        done = len(lat)
    elif args.mode == "closed":
        def client(i):
            ch = grpc.insecure_channel(args.target, options=opts)
            stub = score_call(ch)
            for w in range(3):  # warm-up, not timed
                stub(reqs[(i + w) % len(reqs)], timeout=30)
            for n in range(args.count):
                one(stub, reqs[(i * 7 + n) % len(reqs)])
        start = time.perf_counter()
        ts = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        wall = time.perf_counter() - start
        done = len(lat)
    else:
        ch = grpc.insecure_channel(args.target, options=opts)
        stub = score_call(ch)
        for w in range(5):
            stub(reqs[w % len(reqs)], timeout=30)
        rng = random.Random(0)
        futures, start, t_next, n = [], time.perf_counter(), 0.0, 0
        pending = []
        def cb_factory(t0):
            def cb(f):
                dt = time.perf_counter() - t0
                if f.exception() is None:
                    timings(f)
                    with lock:
                        lat.append(dt)
                else:
                    with lock:
                        errors.append(str(f.code()))
            return cb
        while t_next < args.seconds:
            now = time.perf_counter() - start
            if now < t_next:
                time.sleep(min(t_next - now, 0.01))
                continue
            t0 = start + t_next  # the scheduled arrival, even if this thread is late
            late.append(time.perf_counter() - t0)
            f = stub.future(reqs[n % len(reqs)], timeout=30)
            f.add_done_callback(cb_factory(t0))
            pending.append(f)
            n += 1
            t_next += rng.expovariate(args.rate)
        for f in pending:
            try:
                f.result()
            except Exception:
                pass
        wall = time.perf_counter() - start
        done = len(lat)
    ms = lambda x: None if x is None else round(x * 1e3, 3)
    print(json.dumps({"mode": args.mode, "clients": args.clients, "rate": args.rate if args.mode == "open" else None,
                      "answered": done, "errors": len(errors), "error_codes": sorted(set(errors)),
                      "median_ms": ms(pct(lat, 50)), "p90_ms": ms(pct(lat, 90)), "p99_ms": ms(pct(lat, 99)),
                      "qps": round(done / wall, 1),
                      "server_receive_us_median": pct(receive_us, 50),
                      "server_queue_us_median": pct(queue_us, 50),
                      "server_inference_us_median": pct(inference_us, 50),
                      # Where a tail comes from: the server's own times, and (open loop) the
                      # client's lateness against its schedule, which the latencies include.
                      "server_queue_us_p99": pct(queue_us, 99),
                      "server_inference_us_p99": pct(inference_us, 99),
                      "client_late_ms_p99": ms(pct(late, 99)) if late else None}))


if __name__ == "__main__":
    main()
