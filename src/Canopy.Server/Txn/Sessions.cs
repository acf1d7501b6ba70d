// Transaction sessions at the gateway
// ===================================
//
// A client (CLI, .NET SDK, later the WebSocket gateway) runs a transaction through the server it is connected to:
// txn_begin creates a TxnCoordinator here and returns its id; txn_get / txn_scan / txn_put / txn_delete / txn_cput /
// txn_commit / txn_rollback name it. One operation per transaction at a time (requests of one transaction are
// serialised). A transaction idle for SessionIdleLimit is rolled back (its client vanished).
//
// Outcomes reach the client in one place (CommitAnswer): committed → a result with the commit timestamp; aborted →
// TxnAborted (retryable) or BadRequest (not retryable) with the reason; ambiguous → Ambiguous. A read or write that
// finds the transaction must restart answers TxnAborted, and the session is over.
namespace Canopy.Server;

using System.Collections.Concurrent;
using Canopy.Client;
using Canopy.Clock;
using Canopy.Host;
using Canopy.Ranges;
using Canopy.Rpc;
using Canopy.Txn;

public sealed partial class CanopyServer : IReplicaHost
{
    /// <summary>A transaction with no request for this long is rolled back.</summary>
    private static readonly TimeSpan SessionIdleLimit = TimeSpan.FromSeconds(60);

    /// <summary>Transactions open at once on this gateway (each holds a little memory and a heartbeat).</summary>
    private const int MaxSessions = 10_000;

    private readonly ConcurrentDictionary<Guid, Session> _sessions = new();
    private Timer? _sessionSweeper;
    private readonly SemaphoreSlim _routerGate = new(1, 1);
    private CanopyClient? _router;
    private TxnReplica? _txnReplica;

    /// <summary>The replica side of transactions on this server.</summary>
    private TxnReplica Txn => _txnReplica ??= new TxnReplica(this);

    HybridClock IReplicaHost.Clock => _clock;

    TimeSpan IReplicaHost.MaxOffset => _options.MaxOffset;

    TimeProvider IReplicaHost.Time => TimeProvider.System;

    KeyLatches IReplicaHost.Latches => _latches;

    CancellationToken IReplicaHost.Stopping => _stop.Token;

    (RangeStateMachine? Sm, RpcResponse? Error) IReplicaHost.Locate(byte[] key) => Locate(key);

    Task<(Lease? Lease, HlcTimestamp Timestamp, RpcResponse? Error)> IReplicaHost.EnsureLeaseAsync(RangeStateMachine sm, CancellationToken ct) => EnsureLeaseAsync(sm, ct);

    Task<ProposeOutcome> IReplicaHost.ProposeAsync(ulong rangeId, byte[] command, CancellationToken ct) => _host.ProposeAsync(rangeId, command, ct);

    async Task<RpcResponse> IReplicaHost.RouteAsync(RpcRequest request, byte[] routeKey, CancellationToken ct) =>
        await (await RouterAsync(ct)).SendToRangeAsync(request, routeKey, ct);

    RangeInfo IReplicaHost.Info(RangeStateMachine sm) => Info(sm);

    /// <summary>The router this server uses to reach other ranges' leaseholders (itself in process).</summary>
    internal async Task<CanopyClient> RouterAsync(CancellationToken ct)
    {
        if (_router is { } r)
        {
            return r;
        }

        await _routerGate.WaitAsync(ct);
        try
        {
            if (_router is null)
            {
                var members = _meta.Members.Values.ToList();
                _router = await CanopyClient.ConnectAsync(members, new CanopyClientOptions
                {
                    LocalAddress = _options.ListenAddress,
                    LocalHandler = HandleAsync,
                    InjectedDelay = _options.InjectedDelay,
                    AttemptTimeout = TimeSpan.FromSeconds(10),
                    RequestTimeout = TimeSpan.FromSeconds(20),
                    SuspectDuration = TimeSpan.FromMilliseconds(500),
                }, ct);
            }

            return _router;
        }
        finally
        {
            _routerGate.Release();
        }
    }

    private sealed class Session(TxnCoordinator coordinator)
    {
        public readonly TxnCoordinator Coordinator = coordinator;
        public readonly SemaphoreSlim Gate = new(1, 1);
        public long LastUsed = Environment.TickCount64;
    }

    private sealed class RouterSender(CanopyServer server) : ITxnSender
    {
        public async Task<RpcResponse> SendAsync(RpcRequest request, byte[] routeKey, CancellationToken ct) =>
            await (await server.RouterAsync(ct)).SendToRangeAsync(request, routeKey, ct);

        public async Task<(byte[] Start, byte[]? End)> RangeOfAsync(byte[] key, CancellationToken ct)
        {
            // The layout is known to every server (static ranges); no round trip.
            if (server._meta.Ranges.Select(r => r.ToDescriptor()).FirstOrDefault(d => d.Contains(key)) is { } d)
            {
                return (d.StartKey, d.EndKey);
            }

            var info = (await (await server.RouterAsync(ct)).SendToRangeAsync(new RpcRequest { Method = RpcMethods.RangeLookup, Key = key }, key, ct)).Range;
            return info is null ? throw new InvalidOperationException("no range holds the key") : (info.StartKey, info.EndKey);
        }
    }

    private async Task<RpcResponse> HandleSessionAsync(RpcRequest request, CancellationToken ct)
    {
        if (request.Method == RpcMethods.TxnBegin)
        {
            if (_sessions.Count >= MaxSessions)
            {
                return RpcResponse.Fail(RpcErrorCode.Unavailable, $"this server already runs {MaxSessions} transactions; try again later");
            }

            var args = request.Args ?? [];
            var settings = new TxnSettings
            {
                ParallelCommits = !string.Equals(args.GetValueOrDefault("parallel_commits"), "false", StringComparison.OrdinalIgnoreCase),
                OnePhase = !string.Equals(args.GetValueOrDefault("one_phase"), "false", StringComparison.OrdinalIgnoreCase),
                PipelineWrites = string.Equals(args.GetValueOrDefault("pipeline"), "true", StringComparison.OrdinalIgnoreCase),
                Priority = args.GetValueOrDefault("priority") switch
                {
                    "high" => TxnPriority.High,
                    "low" => TxnPriority.Low,
                    _ => 0,
                },
            };
            var coordinator = new TxnCoordinator(new RouterSender(this), _clock, settings, _log);
            _sessions[coordinator.Meta.Id] = new Session(coordinator);
            _sessionSweeper ??= new Timer(_ => SweepSessions(), null, TimeSpan.FromSeconds(5), TimeSpan.FromSeconds(5));
            return new RpcResponse { Info = new() { ["txn_id"] = coordinator.Meta.Id.ToString() }, Timestamp = coordinator.Meta.ReadTimestamp.ToString() };
        }

        if (!Guid.TryParse(request.TxnId, out var id) || !_sessions.TryGetValue(id, out var session))
        {
            return RpcResponse.Fail(RpcErrorCode.TxnAborted, "unknown transaction on this server (it ended, expired, or the server restarted)");
        }

        await session.Gate.WaitAsync(ct);
        try
        {
            session.LastUsed = Environment.TickCount64;
            var c = session.Coordinator;
            switch (request.Method)
            {
                case RpcMethods.TxnGet:
                    if (ValidateKey(request.Key) is { } badGet)
                    {
                        return RpcResponse.Fail(RpcErrorCode.BadRequest, badGet);
                    }

                    var v = await c.GetAsync(request.Key!, ct);
                    return new RpcResponse { Found = v is not null, Value = v };
                case RpcMethods.TxnGetMany:
                    var keys = request.Keys ?? [];
                    var badMany = keys.Count > 10_000 ? "at most 10,000 keys per txn_get_many" : keys.Select(ValidateKey).FirstOrDefault(b => b is not null);
                    if (badMany is not null)
                    {
                        return RpcResponse.Fail(RpcErrorCode.BadRequest, badMany);
                    }

                    return new RpcResponse { Values = await c.GetManyAsync(keys, ct) };
                case RpcMethods.TxnWriteMany:
                    var writes = request.Writes ?? [];
                    var badWrite = writes.Count > 10_000 ? "at most 10,000 writes per txn_write_many" : writes.Select(w => ValidateKey(w.Key)).FirstOrDefault(b => b is not null);
                    if (badWrite is not null)
                    {
                        return RpcResponse.Fail(RpcErrorCode.BadRequest, badWrite);
                    }

                    foreach (var w in writes)
                    {
                        await c.WriteAsync(w.Key, w.Value, ct);
                    }

                    return new RpcResponse();
                case RpcMethods.TxnScan:
                    var rows = await c.ScanAsync(request.Key is { Length: > 0 } s ? s : [0x01], request.EndKey, request.Limit, ct);
                    return new RpcResponse { Rows = rows };
                case RpcMethods.TxnPut:
                case RpcMethods.TxnDelete:
                    if (ValidateKey(request.Key) is { } badPut)
                    {
                        return RpcResponse.Fail(RpcErrorCode.BadRequest, badPut);
                    }

                    await c.WriteAsync(request.Key!, request.Method == RpcMethods.TxnPut ? request.Value ?? [] : null, ct);
                    return new RpcResponse();
                case RpcMethods.TxnConditionalPut:
                    if (ValidateKey(request.Key) is { } badCput)
                    {
                        return RpcResponse.Fail(RpcErrorCode.BadRequest, badCput);
                    }

                    // Read then write inside the serializable transaction: the condition holds at the commit timestamp.
                    var current = await c.GetAsync(request.Key!, ct);
                    var expected = request.Expected;
                    var matches = current is null ? expected is null : expected is not null && current.AsSpan().SequenceEqual(expected);
                    if (!matches)
                    {
                        return new RpcResponse { Error = new RpcError(RpcErrorCode.ConditionFailed, "the current value is not the expected one"), Found = current is not null, Value = current };
                    }

                    await c.WriteAsync(request.Key!, request.Value ?? [], ct);
                    return new RpcResponse();
                case RpcMethods.TxnCommit:
                    _sessions.TryRemove(id, out _);
                    return CommitAnswer(await c.CommitAsync(ct));
                case RpcMethods.TxnRollback:
                    _sessions.TryRemove(id, out _);
                    await c.RollbackAsync();
                    return new RpcResponse { Status = "aborted" };
                default:
                    return RpcResponse.Fail(RpcErrorCode.BadRequest, $"unknown method '{request.Method}'");
            }
        }
        catch (TxnRetryException e)
        {
            _sessions.TryRemove(id, out _);
            await session.Coordinator.RollbackAsync();
            return RpcResponse.Fail(RpcErrorCode.TxnAborted, e.Message);
        }
        catch (TxnRequestException e)
        {
            return RpcResponse.Fail(e.Code, e.Message);
        }
        finally
        {
            session.Gate.Release();
        }
    }

    /// <summary>The one place where a commit's outcome becomes an answer (txn-pitfalls 5).</summary>
    private static RpcResponse CommitAnswer(TxnResult r) => r.Outcome switch
    {
        TxnOutcome.Committed => new RpcResponse { Status = "committed", Timestamp = r.CommitTimestamp.ToString() },
        TxnOutcome.Aborted when r.Retryable => RpcResponse.Fail(RpcErrorCode.TxnAborted, r.Reason ?? "aborted"),
        TxnOutcome.Aborted => RpcResponse.Fail(RpcErrorCode.BadRequest, r.Reason ?? "rejected"),
        _ => RpcResponse.Fail(RpcErrorCode.Ambiguous, r.Reason ?? "the commit may or may not have happened"),
    };

    private void SweepSessions()
    {
        var now = Environment.TickCount64;
        foreach (var (id, s) in _sessions)
        {
            if (now - Interlocked.Read(ref s.LastUsed) > SessionIdleLimit.TotalMilliseconds && _sessions.TryRemove(id, out _))
            {
                _ = s.Coordinator.RollbackAsync();
            }
        }
    }

    /// <summary>For tests: whether the transaction <paramref name="id"/> is still open on this gateway.</summary>
    internal bool HasOpenTransaction(string id) => Guid.TryParse(id, out var g) && _sessions.ContainsKey(g);

    /// <summary>For tests: the coordinator of an open transaction on this gateway.</summary>
    internal TxnCoordinator? SessionCoordinator(Guid id) => _sessions.TryGetValue(id, out var s) ? s.Coordinator : null;

    /// <summary>For tests: the intents this server's replicas hold on <paramref name="keys"/> (key, transaction).</summary>
    internal List<(byte[] Key, Guid Txn)> LocalIntents(IEnumerable<byte[]> keys)
    {
        var found = new List<(byte[], Guid)>();
        foreach (var k in keys)
        {
            foreach (var sm in _machines.All)
            {
                if (sm.Descriptor is { } d && d.Contains(k) && sm.Mvcc.GetIntent(k) is { } intent)
                {
                    found.Add((k, intent.TxnId));
                }
            }
        }

        return found;
    }

    /// <summary>For tests: the status of a transaction record in this server's replica of its anchor's range.</summary>
    internal TxnStatus? LocalRecordStatus(byte[] anchor, Guid id)
    {
        foreach (var sm in _machines.All)
        {
            if (sm.Descriptor is { } d && d.Contains(anchor))
            {
                return TxnReplica.ReadRecord(sm, Canopy.Mvcc.TxnKeys.Record(anchor, id))?.Status;
            }
        }

        return null;
    }
}
