// The WebSocket gateway (protocol version 1, docs/protocol.md)
// ============================================================
//
// Every server serves /ws on its HTTP port. One connection = one read loop, one write loop and at most MaxInFlight
// request tasks; nothing is shared between connections except the server's request handler, so a slow or hostile
// client only ever stalls itself:
// - Read loop: receives one binary message at a time (at most MaxFrameBytes, else too_large and close), charges the
//   token bucket (rate_limited when empty), decodes one Variant (bad_request when it is not a valid request; the
//   connection stays usable, frame boundaries are WebSocket's), then starts the request once an in-flight slot is
//   free. While all slots are busy it stops reading: the client's sends back up in TCP (backpressure).
// - Requests naming the same transaction run in the order received (each waits for the previous one's task).
// - Write loop: sends the bounded outgoing queue in order. A response that finds the queue full waits at most
//   SendTimeout, as does a single send; then the connection is considered stuck and aborted.
// - Transactions are the server's coordinator sessions, reached through the in-process RPC handler. A connection can
//   only name transactions it began; those still open when it ends are rolled back. Requests in flight when a
//   connection ends still complete (they run under the server's lifetime, not the connection's), then roll-back.
namespace Canopy.Gateway;

using System.Diagnostics;
using System.Net.WebSockets;
using System.Security.Cryptography;
using System.Text;
using System.Threading.Channels;
using Canopy.Rpc;
using Canopy.Tree;
using Canopy.Variant;
using Microsoft.AspNetCore.Http;

/// <summary>Serves the WebSocket protocol over a server's in-process RPC handler.</summary>
public sealed partial class WebSocketGateway
{
    private readonly GatewayOptions _options;
    private readonly Func<RpcRequest, CancellationToken, Task<RpcResponse>> _handler;
    private readonly Action<string> _log;
    private readonly CancellationToken _stopping;
    private readonly VariantDecodeOptions _decodeOptions;
    private readonly TreeTxnRunner _treeRunner;
    private readonly Func<CancellationToken, Task<Canopy.Client.CanopyClient>>? _watchClient;
    private int _connections;

    /// <param name="watchClient">The client subscriptions read change feeds with (null: subscriptions are unavailable).</param>
    public WebSocketGateway(GatewayOptions options, Func<RpcRequest, CancellationToken, Task<RpcResponse>> handler, Action<string> log, CancellationToken stopping,
        Func<CancellationToken, Task<Canopy.Client.CanopyClient>>? watchClient = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.MaxFrameBytes < 64 || options.MaxInFlight < 1 || options.OutgoingQueue < 1 || options.RateBurst < 1 || options.RatePerSecond <= 0)
        {
            throw new ArgumentException("gateway limits must be positive (MaxFrameBytes at least 64)", nameof(options));
        }

        _options = options;
        _handler = handler;
        _log = log;
        _stopping = stopping;
        _decodeOptions = new VariantDecodeOptions { MaxBytes = options.MaxFrameBytes, MaxDepth = 32 };
        _treeRunner = GatewayTreeTxn.Runner(handler);
        _watchClient = watchClient;
    }

    /// <summary>Connections open now.</summary>
    public int Connections => Volatile.Read(ref _connections);

    /// <summary>The endpoint: upgrades to a WebSocket and serves it until it closes.</summary>
    public async Task HandleAsync(HttpContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        if (!context.WebSockets.IsWebSocketRequest)
        {
            context.Response.StatusCode = StatusCodes.Status400BadRequest;
            await context.Response.WriteAsync("this endpoint speaks the Canopy WebSocket protocol (docs/protocol.md)\n");
            return;
        }

        using var socket = await context.WebSockets.AcceptWebSocketAsync();
        Interlocked.Increment(ref _connections);
        try
        {
            await new Connection(this, socket, context.RequestAborted).RunAsync();
        }
        finally
        {
            Interlocked.Decrement(ref _connections);
        }
    }

    private static bool TokenMatches(string? given, string expected) =>
        given is not null && CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(given), Encoding.UTF8.GetBytes(expected));

    private sealed class TokenBucket(double rate, int burst)
    {
        private double _tokens = burst;
        private long _last = Stopwatch.GetTimestamp();

        public bool TryTake()
        {
            var now = Stopwatch.GetTimestamp();
            _tokens = Math.Min(burst, _tokens + (Stopwatch.GetElapsedTime(_last, now).TotalSeconds * rate));
            _last = now;
            if (_tokens >= 1)
            {
                _tokens -= 1;
                return true;
            }

            return false;
        }

        public long RetryAfterMs => (long)Math.Ceiling((1 - _tokens) / rate * 1000);
    }

    /// <summary>A transaction begun on this connection.</summary>
    private sealed class TxnState
    {
        /// <summary>The last request naming it (read loop only): the next one runs after it.</summary>
        public Task Tail = Task.CompletedTask;

        public volatile bool Ended;
    }

    private sealed partial class Connection
    {
        private readonly WebSocketGateway _g;
        private readonly GatewayOptions _o;
        private readonly WebSocket _socket;
        private readonly CancellationTokenSource _abort;
        private readonly Channel<byte[]> _out;
        private readonly SemaphoreSlim _slots;
        private readonly TokenBucket _bucket;
        private readonly Dictionary<string, TxnState> _txns = [];
        private readonly Lock _txnLock = new();
        private readonly Lock _closeLock = new();
        private int _pendingBegins;
        private volatile bool _closing;
        private WebSocketCloseStatus _closeStatus = WebSocketCloseStatus.NormalClosure;
        private string _closeReason = "bye";
        private byte[] _buffer = new byte[4096];

        public Connection(WebSocketGateway gateway, WebSocket socket, CancellationToken requestAborted)
        {
            _g = gateway;
            _o = gateway._options;
            _socket = socket;
            _abort = CancellationTokenSource.CreateLinkedTokenSource(requestAborted);
            _out = Channel.CreateBounded<byte[]>(new BoundedChannelOptions(_o.OutgoingQueue) { SingleReader = true, FullMode = BoundedChannelFullMode.Wait });
            _slots = new SemaphoreSlim(_o.MaxInFlight, _o.MaxInFlight);
            _bucket = new TokenBucket(_o.RatePerSecond, _o.RateBurst);
        }

        public async Task RunAsync()
        {
            var writer = Task.Run(WriteLoopAsync);
            using var onStop = _g._stopping.Register(() => BeginClose(WebSocketCloseStatus.EndpointUnavailable, "server shutting down", null));
            _abort.CancelAfter(_o.HelloTimeout);
            try
            {
                await ReadLoopAsync();
            }
            catch (Exception e) when (e is OperationCanceledException or WebSocketException or ObjectDisposedException)
            {
                // The peer vanished, stalled or the server is stopping: nothing more to read.
            }

            // Let requests in flight finish (each slot back), then close, then roll back what is still open.
            for (var i = 0; i < _o.MaxInFlight; i++)
            {
                await _slots.WaitAsync();
            }

            BeginClose(WebSocketCloseStatus.NormalClosure, "bye", null);
            EndSubscriptions();
            List<string> open;
            lock (_txnLock)
            {
                open = [.. _txns.Keys];
                _txns.Clear();
            }

            foreach (var txn in open)
            {
                try
                {
                    await _g._handler(new RpcRequest { Method = RpcMethods.TxnRollback, TxnId = txn }, _g._stopping);
                }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    // Best effort: the server's idle sweep and the heartbeat expiry clean up what this misses.
                }
            }

            _abort.CancelAfter(TimeSpan.FromSeconds(2)); // a peer that never reads cannot keep the write loop
            await writer;
            _abort.Dispose();
        }

        // ------------------------------------------------------------ reading

        private async Task ReadLoopAsync()
        {
            var authenticated = false;
            var rejectedInARow = 0;
            while (true)
            {
                var (type, length, tooLarge) = await ReceiveAsync(_abort.Token);
                if (type == WebSocketMessageType.Close)
                {
                    return;
                }

                if (_closing)
                {
                    continue; // draining until the peer's close (bounded by the abort timer BeginClose sets)
                }

                if (tooLarge)
                {
                    Fatal(WebSocketCloseStatus.MessageTooBig, GatewayProtocol.Error(null, GatewayProtocol.Codes.TooLarge, $"a message may be at most {_o.MaxFrameBytes} bytes", ("max_frame_bytes", _o.MaxFrameBytes)));
                    continue;
                }

                GodotVariant? id = null;
                VariantDictionary? message = null;
                string? problem = null;
                if (type != WebSocketMessageType.Binary)
                {
                    problem = "messages must be binary frames holding one Variant (var_to_bytes)";
                }
                else if (!VariantCodec.TryDecode(_buffer.AsSpan(0, length), out var value, out var error, _g._decodeOptions))
                {
                    problem = error.Code == VariantErrorCode.TooLarge ? error.Message : $"not a Variant: {error}";
                }
                else if (value is not VariantDictionary d)
                {
                    problem = $"a message is a Dictionary, not a {value.Type}";
                }
                else
                {
                    message = d;
                    if (d.TryGetValue("id", out var rawId) && rawId is VariantInt)
                    {
                        id = rawId;
                    }
                }

                ShrinkBuffer();
                if (!authenticated)
                {
                    authenticated = await HelloAsync(message, id, problem);
                    continue;
                }

                if (!_bucket.TryTake())
                {
                    if (++rejectedInARow > _o.MaxRejectedInARow)
                    {
                        Fatal(WebSocketCloseStatus.PolicyViolation, GatewayProtocol.Error(id, GatewayProtocol.Codes.RateLimited, "too many messages over the rate limit: closing"));
                        continue;
                    }

                    await SendAsync(GatewayProtocol.Error(id, GatewayProtocol.Codes.RateLimited, $"over the limit of {_o.RatePerSecond} messages/s (burst {_o.RateBurst})", ("retry_after_ms", _bucket.RetryAfterMs)));
                    continue;
                }

                rejectedInARow = 0;
                if (problem is not null || message is null)
                {
                    await SendAsync(GatewayProtocol.Error(id, GatewayProtocol.Codes.BadRequest, problem ?? "empty message"));
                    continue;
                }

                await DispatchAsync(message, id);
            }
        }

        /// <summary>Receives one message into <see cref="_buffer"/>; stops early (tooLarge) past the limit.</summary>
        private async Task<(WebSocketMessageType Type, int Length, bool TooLarge)> ReceiveAsync(CancellationToken ct)
        {
            var count = 0;
            while (true)
            {
                if (count == _buffer.Length)
                {
                    if (_buffer.Length > _o.MaxFrameBytes)
                    {
                        return (WebSocketMessageType.Binary, count, true);
                    }

                    Array.Resize(ref _buffer, (int)Math.Min((long)_o.MaxFrameBytes + 1, _buffer.Length * 2L));
                }

                var r = await _socket.ReceiveAsync(_buffer.AsMemory(count), ct);
                if (r.MessageType == WebSocketMessageType.Close)
                {
                    return (WebSocketMessageType.Close, 0, false);
                }

                count += r.Count;
                if (count > _o.MaxFrameBytes)
                {
                    return (r.MessageType, count, true);
                }

                if (r.EndOfMessage)
                {
                    return (r.MessageType, count, false);
                }
            }
        }

        private void ShrinkBuffer()
        {
            if (_buffer.Length > 64 * 1024)
            {
                _buffer = new byte[4096]; // an idle connection keeps 4 KiB, not its largest message
            }
        }

        private async Task<bool> HelloAsync(VariantDictionary? message, GodotVariant? id, string? problem)
        {
            var f = message is null ? null : new Fields(message);
            if (problem is not null || f is null || f.String("op", true) != "hello")
            {
                Fatal(WebSocketCloseStatus.ProtocolError, GatewayProtocol.Error(id, GatewayProtocol.Codes.BadRequest, problem ?? "the first message must be {\"op\": \"hello\", \"version\": 1, \"token\": ...}"));
                return false;
            }

            var version = f.Int("version", true);
            if (version is null)
            {
                Fatal(WebSocketCloseStatus.ProtocolError, GatewayProtocol.Error(id, GatewayProtocol.Codes.BadRequest, $"hello: {f.Problem}"));
                return false;
            }

            if (version != GatewayProtocol.Version)
            {
                Fatal(WebSocketCloseStatus.ProtocolError, GatewayProtocol.Error(id, GatewayProtocol.Codes.UnsupportedVersion, $"this server speaks protocol version {GatewayProtocol.Version}", ("supported", new VariantArray(GatewayProtocol.Version))));
                return false;
            }

            if (!TokenMatches(f.String("token", false), _o.Token))
            {
                Fatal(WebSocketCloseStatus.PolicyViolation, GatewayProtocol.Error(id, GatewayProtocol.Codes.Unauthenticated, "missing or wrong token"));
                return false;
            }

            _abort.CancelAfter(Timeout.InfiniteTimeSpan); // the hello deadline no longer applies
            await SendAsync(new VariantDictionary(
                ("op", "welcome"),
                ("id", id ?? GodotVariant.Nil),
                ("version", GatewayProtocol.Version),
                ("session", Guid.NewGuid().ToString()),
                ("max_frame_bytes", _o.MaxFrameBytes),
                ("max_in_flight", _o.MaxInFlight),
                ("rate_per_second", _o.RatePerSecond),
                ("rate_burst", _o.RateBurst)));
            return true;
        }

        // ------------------------------------------------------------ requests

        private async Task DispatchAsync(VariantDictionary message, GodotVariant? id)
        {
            var f = new Fields(message);
            var op = f.String("op", true);
            if (f.Problem is not null || op is null)
            {
                await SendAsync(GatewayProtocol.Error(id, GatewayProtocol.Codes.BadRequest, f.Problem ?? "'op' is required"));
                return;
            }

            if (id is null)
            {
                await SendAsync(GatewayProtocol.Error(null, GatewayProtocol.Codes.BadRequest, "'id' (an int) is required"));
                return;
            }

            switch (op)
            {
                case "ping":
                    await SendAsync(GatewayProtocol.Result(id, ("pong", true)));
                    return;
                case "hello":
                    await SendAsync(GatewayProtocol.Error(id, GatewayProtocol.Codes.BadRequest, "already authenticated"));
                    return;
                case "txn_begin":
                    if (Volatile.Read(ref _pendingBegins) + TxnCount() >= _o.MaxTransactionsPerConnection)
                    {
                        await SendAsync(GatewayProtocol.Error(id, GatewayProtocol.Codes.RateLimited, $"at most {_o.MaxTransactionsPerConnection} open transactions per connection; commit or roll back one first"));
                        return;
                    }

                    var priority = f.String("priority", false);
                    if (f.Problem is not null || priority is not (null or "normal" or "high" or "low"))
                    {
                        await SendAsync(GatewayProtocol.Error(id, GatewayProtocol.Codes.BadRequest, f.Problem ?? "'priority' is one of normal, high, low"));
                        return;
                    }

                    Interlocked.Increment(ref _pendingBegins);
                    await StartAsync(Task.CompletedTask, () => BeginAsync(id, priority));
                    return;
                case "txn_get" or "txn_scan" or "txn_put" or "txn_delete" or "txn_cput" or "txn_commit" or "txn_rollback":
                    break;
                case "subscribe":
                    await SubscribeAsync(id, f);
                    return;
                case "unsubscribe":
                    await UnsubscribeAsync(id, f);
                    return;
                case var treeOp when GatewayTreeOps.IsTreeOp(treeOp):
                    // One server-side transaction per op, begun and ended by the op itself (not counted as the
                    // connection's open transactions); runs under the server's lifetime like the other requests.
                    await StartAsync(Task.CompletedTask, () => TreeOpAsync(id, treeOp, f));
                    return;
                default:
                    await SendAsync(GatewayProtocol.Error(id, GatewayProtocol.Codes.BadRequest, $"unknown op '{op}'"));
                    return;
            }

            var txn = f.String("txn", true);
            var request = f.Problem is null ? TxnRequest(op, txn!, f) : null;
            if (request is null)
            {
                await SendAsync(GatewayProtocol.Error(id, GatewayProtocol.Codes.BadRequest, $"{op}: {f.Problem}"));
                return;
            }

            TxnState? state;
            lock (_txnLock)
            {
                _txns.TryGetValue(txn!, out state);
            }

            if (state is null || state.Ended)
            {
                await SendAsync(GatewayProtocol.Error(id, GatewayProtocol.Codes.NotFound, $"no open transaction '{txn}' on this connection (it ended, or another connection began it)"));
                return;
            }

            state.Tail = await StartAsync(state.Tail, () => TxnOpAsync(id, txn!, state, request));
        }

        private int TxnCount()
        {
            lock (_txnLock)
            {
                return _txns.Count;
            }
        }

        /// <summary>The RPC request of a transaction op, or null with <see cref="Fields.Problem"/> set.</summary>
        private RpcRequest? TxnRequest(string op, string txn, Fields f)
        {
            RpcRequest? r = op switch
            {
                "txn_get" => new RpcRequest { Method = RpcMethods.TxnGet, TxnId = txn, Key = f.Bytes("key", true) },
                "txn_put" => new RpcRequest { Method = RpcMethods.TxnPut, TxnId = txn, Key = f.Bytes("key", true), Value = f.Bytes("value", true) },
                "txn_delete" => new RpcRequest { Method = RpcMethods.TxnDelete, TxnId = txn, Key = f.Bytes("key", true) },
                "txn_cput" => new RpcRequest { Method = RpcMethods.TxnConditionalPut, TxnId = txn, Key = f.Bytes("key", true), Value = f.Bytes("value", true), Expected = f.Bytes("expected", false) },
                "txn_commit" => new RpcRequest { Method = RpcMethods.TxnCommit, TxnId = txn },
                "txn_rollback" => new RpcRequest { Method = RpcMethods.TxnRollback, TxnId = txn },
                _ => ScanRequest(txn, f),
            };
            return f.Problem is null ? r : null;
        }

        private RpcRequest? ScanRequest(string txn, Fields f)
        {
            var start = f.Bytes("start", false);
            var end = f.Bytes("end", false);
            var limit = f.Int("limit", false) ?? 0;
            if (limit < 0)
            {
                limit = 0;
            }

            // Keys below 0x01 are the system's: a scan starts at 0x01 at the lowest.
            if (start is null || start.AsSpan().SequenceCompareTo((ReadOnlySpan<byte>)[0x01]) < 0)
            {
                start = [0x01];
            }

            return f.Problem is null ? new RpcRequest
            {
                Method = RpcMethods.TxnScan,
                TxnId = txn,
                Key = start,
                EndKey = end,
                Limit = (int)(limit == 0 ? _o.MaxScanLimit : Math.Min(limit, _o.MaxScanLimit)),
            } : null;
        }

        /// <summary>Takes an in-flight slot (waiting: backpressure), then runs <paramref name="work"/> after <paramref name="after"/>.</summary>
        private async Task<Task> StartAsync(Task after, Func<Task> work)
        {
            await _slots.WaitAsync(_abort.Token);
            return Task.Run(async () =>
            {
                try
                {
                    try
                    {
                        await after;
                    }
                    catch (Exception e) when (e is not OutOfMemoryException)
                    {
                        // the previous request's failure was reported to the client already
                    }

                    await work();
                }
                finally
                {
                    _slots.Release();
                }
            });
        }

        private async Task BeginAsync(GodotVariant id, string? priority)
        {
            try
            {
                var args = new Dictionary<string, string>();
                if (priority is "high" or "low")
                {
                    args["priority"] = priority;
                }

                var r = await CallAsync(new RpcRequest { Method = RpcMethods.TxnBegin, Args = args });
                if (r.Error is { } e)
                {
                    await SendAsync(MapError(id, e));
                    return;
                }

                var txn = r.Info?.GetValueOrDefault("txn_id");
                if (txn is null)
                {
                    await SendAsync(GatewayProtocol.Error(id, GatewayProtocol.Codes.Internal, "the server began no transaction"));
                    return;
                }

                lock (_txnLock)
                {
                    _txns[txn] = new TxnState();
                }

                await SendAsync(GatewayProtocol.Result(id, ("txn", txn), ("read_ts", r.Timestamp ?? string.Empty)));
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                await SendAsync(ExceptionError(id, e));
            }
            finally
            {
                Interlocked.Decrement(ref _pendingBegins);
            }
        }

        private async Task TxnOpAsync(GodotVariant id, string txn, TxnState state, RpcRequest request)
        {
            if (state.Ended)
            {
                await SendAsync(GatewayProtocol.Error(id, GatewayProtocol.Codes.NotFound, $"transaction '{txn}' ended before this request ran"));
                return;
            }

            var ends = request.Method is RpcMethods.TxnCommit or RpcMethods.TxnRollback;
            VariantDictionary reply;
            try
            {
                var r = await CallAsync(request);
                reply = Reply(id, request.Method, r);
                if (ends || r.Error?.Code == RpcErrorCode.TxnAborted)
                {
                    End(txn, state);
                }
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                if (request.Method == RpcMethods.TxnCommit)
                {
                    // Never report a commit that may have happened as failed (txn-pitfalls 5).
                    End(txn, state);
                    reply = GatewayProtocol.Result(id, ("status", "ambiguous"), ("reason", $"the commit did not answer: {e.Message}"));
                }
                else
                {
                    reply = ExceptionError(id, e);
                }
            }

            await SendAsync(reply);
        }

        private async Task TreeOpAsync(GodotVariant id, string op, Fields f)
        {
            VariantDictionary reply;
            try
            {
                reply = await GatewayTreeOps.RunAsync(op, f, id, _g._treeRunner, _g._decodeOptions, _g._stopping);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                reply = ExceptionError(id, e);
            }

            await SendAsync(reply);
        }

        private void End(string txn, TxnState state)
        {
            state.Ended = true;
            lock (_txnLock)
            {
                _txns.Remove(txn);
            }
        }

        private Task<RpcResponse> CallAsync(RpcRequest request) => _g._handler(request, _g._stopping);

        private static VariantDictionary Reply(GodotVariant id, string method, RpcResponse r)
        {
            if (method == RpcMethods.TxnCommit)
            {
                return r.Error is not { } ce
                    ? GatewayProtocol.Result(id, ("status", "committed"), ("commit_ts", r.Timestamp ?? string.Empty))
                    : ce.Code switch
                    {
                        RpcErrorCode.TxnAborted => GatewayProtocol.Result(id, ("status", "aborted"), ("reason", ce.Message), ("retryable", true)),
                        RpcErrorCode.BadRequest => GatewayProtocol.Result(id, ("status", "aborted"), ("reason", ce.Message), ("retryable", false)),
                        _ => GatewayProtocol.Result(id, ("status", "ambiguous"), ("reason", ce.Message)),
                    };
            }

            if (method == RpcMethods.TxnConditionalPut && r.Error is { Code: RpcErrorCode.ConditionFailed })
            {
                return GatewayProtocol.Result(id, ("applied", false), ("found", r.Found), ("value", GatewayProtocol.Bytes(r.Value)));
            }

            if (r.Error is { } e)
            {
                return MapError(id, e);
            }

            return method switch
            {
                RpcMethods.TxnGet => GatewayProtocol.Result(id, ("found", r.Found), ("value", r.Found ? GatewayProtocol.Bytes(r.Value ?? []) : GatewayProtocol.Bytes(null))),
                RpcMethods.TxnScan => GatewayProtocol.Result(id, ("rows", new VariantArray([.. (r.Rows ?? []).Select(row => (GodotVariant)new VariantDictionary(("key", new PackedByteArray(row.Key)), ("value", new PackedByteArray(row.Value))))]))),
                RpcMethods.TxnConditionalPut => GatewayProtocol.Result(id, ("applied", true)),
                RpcMethods.TxnRollback => GatewayProtocol.Result(id, ("status", "aborted")),
                _ => GatewayProtocol.Result(id),
            };
        }

        private static VariantDictionary MapError(GodotVariant id, RpcError e) => GatewayProtocol.Error(id, GatewayProtocol.CodeOf(e.Code), e.Message);

        private VariantDictionary ExceptionError(GodotVariant id, Exception e)
        {
            if (e is OperationCanceledException && _g._stopping.IsCancellationRequested)
            {
                return GatewayProtocol.Error(id, GatewayProtocol.Codes.Unavailable, "the server is shutting down");
            }

            _g._log($"gateway: request failed: {e}");
            return GatewayProtocol.Error(id, GatewayProtocol.Codes.Internal, e.Message);
        }

        // ------------------------------------------------------------ writing

        /// <summary>Queues a message; waits at most SendTimeout for room (else the peer is stuck: abort).</summary>
        private async Task SendAsync(VariantDictionary message)
        {
            var frame = Encode(message);
            using var t = CancellationTokenSource.CreateLinkedTokenSource(_abort.Token);
            t.CancelAfter(_o.SendTimeout);
            try
            {
                await _out.Writer.WriteAsync(frame, t.Token);
            }
            catch (ChannelClosedException)
            {
                // closing: the message is dropped with the connection
            }
            catch (OperationCanceledException)
            {
                Abort();
            }
        }

        private byte[] Encode(VariantDictionary message)
        {
            byte[] frame;
            try
            {
                frame = VariantCodec.Encode(message);
            }
            catch (VariantEncodeException e)
            {
                frame = VariantCodec.Encode(GatewayProtocol.Error(message.TryGetValue("id", out var id) ? id : null, GatewayProtocol.Codes.Internal, $"the answer cannot be encoded: {e.Message}"));
            }

            if (frame.Length > _o.MaxResponseBytes)
            {
                frame = VariantCodec.Encode(GatewayProtocol.Error(message.TryGetValue("id", out var id) ? id : null, GatewayProtocol.Codes.TooLarge, $"the answer would be {frame.Length} bytes, over the limit of {_o.MaxResponseBytes}; ask for less (e.g. a smaller scan limit)"));
            }

            return frame;
        }

        /// <summary>Sends what is queued, then the close frame (BeginClose completes the queue).</summary>
        private async Task WriteLoopAsync()
        {
            try
            {
                await foreach (var frame in _out.Reader.ReadAllAsync(_abort.Token))
                {
                    using var t = CancellationTokenSource.CreateLinkedTokenSource(_abort.Token);
                    t.CancelAfter(_o.SendTimeout);
                    await _socket.SendAsync(frame, WebSocketMessageType.Binary, endOfMessage: true, t.Token);
                }

                if (_socket.State is WebSocketState.Open or WebSocketState.CloseReceived)
                {
                    using var t = CancellationTokenSource.CreateLinkedTokenSource(_abort.Token);
                    t.CancelAfter(_o.SendTimeout);
                    await _socket.CloseOutputAsync(_closeStatus, _closeReason, t.Token);
                }
            }
            catch (Exception e) when (e is OperationCanceledException or WebSocketException or ObjectDisposedException)
            {
                Abort();
            }
            finally
            {
                _out.Writer.TryComplete();
            }
        }

        /// <summary>Ends the conversation: <paramref name="last"/> (if any) is the last message before the close frame.</summary>
        private void BeginClose(WebSocketCloseStatus status, string reason, VariantDictionary? last)
        {
            lock (_closeLock)
            {
                if (_closing)
                {
                    return;
                }

                _closing = true;
                _closeStatus = status;
                _closeReason = reason;
                if (last is not null)
                {
                    _out.Writer.TryWrite(Encode(last)); // dropped if the queue is full: that peer is not reading anyway
                }

                _out.Writer.TryComplete();
            }

            try
            {
                _abort.CancelAfter(TimeSpan.FromSeconds(3)); // the peer has this long to answer the close
            }
            catch (ObjectDisposedException)
            {
            }
        }

        private void Fatal(WebSocketCloseStatus status, VariantDictionary error) =>
            BeginClose(status, error.TryGetValue("code", out var c) && c is VariantString s ? s.Value : "error", error);

        private void Abort()
        {
            try
            {
                _abort.Cancel();
            }
            catch (ObjectDisposedException)
            {
            }

            _socket.Abort();
        }
    }
}
