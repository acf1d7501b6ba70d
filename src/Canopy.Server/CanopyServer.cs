// A Canopy server: ranges with leases on the multi-raft host, serving the client RPC
// ===================================================================================
//
// Startup: open the store (RocksDB; a store already in use is refused), load or create ClusterMeta (node id = position
// of --listen-addr in --join), start the RaftHost (peer transport on --listen-addr, which also accepts client
// connections), start the lease manager, the clock-offset monitor and the HTTP endpoint. A single-node server
// initialises itself; a cluster waits for `canopy init` (RPC `init` to any member), which bootstraps the same range
// layout on every member (RPC `bootstrap`), idempotently.
//
// Serving (raft-pitfalls 13, 14; DESIGN §7):
// - Only the leaseholder serves a range, and only while now + max offset < lease expiration (so a read can never
//   miss a write that a later leaseholder made at a timestamp within its uncertainty). Others answer
//   NotLeaseholder with the holder (or Raft leader) as a hint.
// - The lease is held by the Raft leader: the lease manager (every tick) extends the leader's own lease when less
//   than half of it is left, and takes over a lease only after the previous one expired (its start is after that
//   expiration). Leases are replicated commands (RangeStateMachine applies the rules deterministically).
// - Evaluation (plain and transactional) is TxnReplica's (Txn/ReplicaTxn.cs): writes hold the latches of their keys
//   from evaluation until applied and written here, are timestamped above every read of their keys (timestamp
//   cache), carry the lease sequence they were evaluated under (void at apply if the lease changed); reads hold their
//   key's latch, read at the HLC's now and record the read; intents in the way are pushed and resolved first.
// - Transactions of this server's clients are coordinated here (Txn/Sessions.cs, TxnCoordinator).
// Failure cases: a leaseholder crash leaves its ranges without a lease until its lease expires (at most the lease
// duration after its last extension) and a new Raft leader takes over; writes in flight get Ambiguous (the proposal
// may commit) or a retryable error if they provably did not. A server whose clock is further than the max offset
// from a majority of its peers refuses to serve and says why.
namespace Canopy.Server;

using System.Collections.Concurrent;
using System.Net;
using System.Text.Json;
using Canopy.Clock;
using Canopy.Host;
using Canopy.Mvcc;
using Canopy.Ranges;
using Canopy.Replication.MultiRaft;
using Canopy.Replication.Raft;
using Canopy.Rpc;
using Canopy.Storage;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

/// <summary>A configuration or environment problem that prevents the server from starting (one clear line).</summary>
public sealed class ServerStartException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>Configuration of a <see cref="CanopyServer"/>.</summary>
public sealed record ServerOptions
{
    public required string StoreDirectory { get; init; }

    /// <summary>--listen-addr exactly as given (members are identified by it).</summary>
    public required string ListenAddress { get; init; }

    public required IPEndPoint ListenEndPoint { get; init; }

    public IPEndPoint? HttpEndPoint { get; init; }

    /// <summary>--join: every initial server's --listen-addr, the same list on each.</summary>
    public IReadOnlyList<string> Join { get; init; } = [];

    /// <summary>One server, one replica per range; initialises itself.</summary>
    public bool SingleNode { get; init; }

    /// <summary>User ranges created at initialisation (plus the system range).</summary>
    public int UserRanges { get; init; } = 6;

    public TimeSpan LeaseDuration { get; init; } = TimeSpan.FromSeconds(2);

    public TimeSpan TickInterval { get; init; } = TimeSpan.FromMilliseconds(50);

    public int ElectionTicks { get; init; } = 10;

    public TimeSpan MaxOffset { get; init; } = HybridClock.DefaultMaxOffset;

    public string ClusterSecret { get; init; } = "canopy-dev-cluster";

    /// <summary>Benchmarks only: one-way delay added to every message this server sends to another server.</summary>
    public TimeSpan InjectedDelay { get; init; }

    public Action<string> Log { get; init; } = _ => { };

    /// <summary>
    /// How far behind the leaseholder's clock a range's closed timestamp trails (change feeds: a subscriber sees a write
    /// about this long after it commits). Writes of transactions older than this are pushed above it (and refresh), so
    /// it must stay above a typical transaction's duration; 50 ms suits game traffic on one site.
    /// </summary>
    public TimeSpan ClosedTimestampLag { get; init; } = TimeSpan.FromMilliseconds(50);

    /// <summary>The WebSocket gateway on the HTTP port (/ws): token and limits (docs/protocol.md).</summary>
    public Canopy.Gateway.GatewayOptions Gateway { get; init; } = new();
}

/// <summary>One Canopy server (see the file header).</summary>
public sealed partial class CanopyServer : IAsyncDisposable
{
    /// <summary>Keys starting with this byte are the system's (range descriptors); clients may not write them.</summary>
    public const byte SystemKeyPrefix = 0x00;

    // Below the client's per-attempt timeout (5 s), so an ambiguous outcome reaches the client as such.

    private readonly ServerOptions _options;
    private readonly IStorageEngine _engine;
    private readonly HybridClock _clock;
    private readonly RangeStateMachineFactory _machines = new();
    private readonly KeyLatches _latches = new();
    private readonly CancellationTokenSource _stop = new();
    private readonly ConcurrentDictionary<ulong, byte> _leaseProposals = new();
    private readonly ConcurrentDictionary<string, RpcClient> _peerClients = new();
    private readonly ClockSkewMonitor _skew;
    private readonly SemaphoreSlim _initLock = new(1, 1);
    private readonly Action<string> _log;
    private RaftHost _host = null!;
    private WebApplication? _web;
    private volatile ClusterMeta _meta;
    private volatile Dictionary<ulong, ReplicaStatus> _status = [];
    private Task _background = Task.CompletedTask;

    // Leases that started before this process started are never served under: after a crash the replica's applied
    // state may lag what it acknowledged under that lease (applies are not synced), so it would serve stale reads.
    private readonly HlcTimestamp _startedAt;

    private CanopyServer(ServerOptions options, IStorageEngine engine, ClusterMeta meta)
    {
        _options = options;
        _engine = engine;
        _meta = meta;
        _log = options.Log;
        _clock = new HybridClock(TimeProvider.System, options.MaxOffset);
        _skew = new ClockSkewMonitor(options.MaxOffset, TimeProvider.System, TimeSpan.FromSeconds(10));
        _startedAt = _clock.Now();
    }

    public ulong NodeId => _meta.NodeId;

    public bool IsInitialized => _meta.Initialized;

    public HybridClock Clock => _clock;

    public static async Task<CanopyServer> StartAsync(ServerOptions options)
    {
        Directory.CreateDirectory(options.StoreDirectory);
        var engine = RocksDbEngine.Open(options.StoreDirectory);
        CanopyServer? server = null;
        try
        {
            var meta = ClusterMeta.Load(engine) ?? NewMeta(options);
            meta.Save(engine);
            server = new CanopyServer(options, engine, meta);
            await server.StartHostAsync();
            return server;
        }
        catch
        {
            if (server is not null)
            {
                await server.DisposeAsync();
            }
            else
            {
                engine.Dispose();
            }

            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_stop.IsCancellationRequested)
        {
            return;
        }

        _stop.Cancel();
        _sessionSweeper?.Dispose();
        if (_router is not null)
        {
            await _router.DisposeAsync();
        }
        try
        {
            await _background;
        }
        catch (OperationCanceledException)
        {
        }

        if (_web is not null)
        {
            await _web.StopAsync();
            await _web.DisposeAsync();
        }

        foreach (var c in _peerClients.Values)
        {
            await c.DisposeAsync();
        }

        if (_host is not null)
        {
            await _host.DisposeAsync(); // disposes the engine
        }
        else
        {
            _engine.Dispose();
        }
    }

    // ---------------------------------------------------------------- startup

    private static ClusterMeta NewMeta(ServerOptions options)
    {
        if (options.SingleNode)
        {
            return new ClusterMeta { NodeId = 1, Members = new() { [1] = options.ListenAddress } };
        }

        if (options.Join.Count == 0)
        {
            throw new ServerStartException("--join is required: list every initial server's --listen-addr (the same list on each)");
        }

        var index = options.Join.ToList().FindIndex(j => string.Equals(j, options.ListenAddress, StringComparison.OrdinalIgnoreCase));
        if (index < 0)
        {
            throw new ServerStartException($"--join ({string.Join(",", options.Join)}) must include this server's --listen-addr {options.ListenAddress}");
        }

        var members = new Dictionary<ulong, string>();
        for (var i = 0; i < options.Join.Count; i++)
        {
            members[(ulong)(i + 1)] = options.Join[i];
        }

        return new ClusterMeta { NodeId = (ulong)(index + 1), Members = members };
    }

    private async Task StartHostAsync()
    {
        var meta = _meta;
        var peers = new Dictionary<ulong, EndPoint>();
        foreach (var (id, address) in meta.Members)
        {
            if (id != meta.NodeId)
            {
                peers[id] = ParseEndPoint(address);
            }
        }

        try
        {
            _host = RaftHost.Start(
                new RaftHostOptions
                {
                    ServerId = meta.NodeId,
                    ListenEndPoint = _options.ListenEndPoint,
                    Peers = peers,
                    ClusterSecret = _options.ClusterSecret,
                    TickInterval = _options.TickInterval,
                    Scheduler = new SchedulerOptions
                    {
                        ElectionTicks = _options.ElectionTicks,
                        LivenessTicks = _options.ElectionTicks,
                        HeartbeatTicks = Math.Max(1, _options.ElectionTicks / 5),
                    },
                    Log = _log,
                    OnClientConnection = socket => _ = RpcServerConnection.ServeAsync(socket, HandleAsync, _log, _stop.Token),
                    InjectedDelay = _options.InjectedDelay,
                },
                _machines,
                _engine);
        }
        catch (System.Net.Sockets.SocketException ex) when (ex.SocketErrorCode == System.Net.Sockets.SocketError.AddressAlreadyInUse)
        {
            throw new ServerStartException($"--listen-addr {_options.ListenAddress} is already in use by another process", ex);
        }

        if (_options.HttpEndPoint is { } http)
        {
            await StartHttpAsync(http);
        }

        if (!meta.Initialized && _options.SingleNode)
        {
            await BootstrapLocallyAsync(NewPlan(meta));
            _log("initialised a new single-node cluster");
        }
        else if (meta.Initialized)
        {
            _log($"node {meta.NodeId} restarted from its store (cluster {meta.ClusterId})");
        }
        else
        {
            _log($"node {meta.NodeId} waiting for `canopy init` (members: {string.Join(", ", meta.Members.Select(m => $"{m.Key}={m.Value}"))})");
        }

        _background = Task.WhenAll(Task.Run(LeaseLoopAsync), Task.Run(ClockLoopAsync));
    }

    private async Task StartHttpAsync(IPEndPoint endpoint)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k => k.Listen(endpoint));
        var web = builder.Build();
        web.UseWebSockets();
        web.Map(Canopy.Gateway.GatewayProtocol.Path, new Canopy.Gateway.WebSocketGateway(_options.Gateway, HandleAsync, _log, _stop.Token, ct => RouterAsync(ct)).HandleAsync);
        web.MapGet("/health", () => Results.Text(IsInitialized ? "ok" : "waiting for init"));
        web.MapGet("/status", async (HttpContext ctx) =>
        {
            ctx.Response.ContentType = "application/json";
            await ctx.Response.WriteAsync(JsonSerializer.Serialize(ListRanges(), RpcJson.Options));
        });
        try
        {
            await web.StartAsync();
        }
        catch (IOException ex)
        {
            await web.DisposeAsync();
            throw new ServerStartException($"--http-addr {endpoint} cannot be used: {ex.Message}", ex);
        }

        _web = web;
    }

    private static IPEndPoint ParseEndPoint(string address)
    {
        var colon = address.LastIndexOf(':');
        var host = address[..colon].Trim('[', ']');
        var port = int.Parse(address[(colon + 1)..], System.Globalization.CultureInfo.InvariantCulture);
        var ip = IPAddress.TryParse(host, out var a) ? a : Dns.GetHostAddresses(host).First();
        return new IPEndPoint(ip, port);
    }

    // ---------------------------------------------------------------- initialisation

    /// <summary>The initial layout: the system range, then <see cref="ServerOptions.UserRanges"/> user ranges.</summary>
    private ClusterMeta NewPlan(ClusterMeta meta)
    {
        var ids = meta.Members.Keys.Order().ToArray();
        var rf = Math.Min(3, ids.Length);
        var bounds = new List<byte[]> { Array.Empty<byte>(), new byte[] { 0x01 } };
        var n = Math.Max(1, _options.UserRanges);
        for (var i = 1; i < n; i++)
        {
            bounds.Add([(byte)('a' + (i * 26 / n))]);
        }

        var ranges = new List<ClusterMeta.RangeLayout>();
        for (var i = 0; i < bounds.Count; i++)
        {
            var replicas = Enumerable.Range(0, rf).Select(j => ids[(i + j) % ids.Length]).ToArray();
            var end = i + 1 < bounds.Count ? bounds[i + 1] : null;
            ranges.Add(ClusterMeta.RangeLayout.From(new RangeDescriptor((ulong)(i + 1), bounds[i], end, replicas)));
        }

        return meta with { ClusterId = meta.ClusterId == Guid.Empty ? Guid.NewGuid() : meta.ClusterId, Ranges = ranges };
    }

    private async Task BootstrapLocallyAsync(ClusterMeta plan)
    {
        await _initLock.WaitAsync();
        try
        {
            if (_meta.Initialized)
            {
                if (_meta.ClusterId != plan.ClusterId)
                {
                    throw new InvalidOperationException($"this server already belongs to cluster {_meta.ClusterId}");
                }

                return;
            }

            foreach (var layout in plan.Ranges)
            {
                var d = layout.ToDescriptor();
                if (d.Replicas.Contains(_meta.NodeId))
                {
                    await _host.BootstrapIfMissingAsync(d.RangeId, new ConfState(d.Replicas, []), RangeStateMachine.InitialSnapshot(d));
                }
            }

            var meta = _meta with { ClusterId = plan.ClusterId, Ranges = plan.Ranges, Initialized = true };
            meta.Save(_engine);
            _meta = meta;

            // Spread leadership (and so leases): each range's first replica campaigns at once.
            foreach (var layout in plan.Ranges)
            {
                if (layout.Replicas[0] == _meta.NodeId)
                {
                    await _host.InvokeAsync(s =>
                    {
                        s.Campaign(layout.RangeId);
                        return true;
                    });
                }
            }
        }
        finally
        {
            _initLock.Release();
        }
    }

    private async Task<RpcResponse> HandleInitAsync(CancellationToken ct)
    {
        if (_meta.Initialized)
        {
            return RpcResponse.Fail(RpcErrorCode.AlreadyInitialized, $"the cluster is already initialised (cluster {_meta.ClusterId})");
        }

        var plan = NewPlan(_meta);

        // Remember the plan's cluster id, so a retried init proposes the same cluster to members that got it.
        _meta = _meta with { ClusterId = plan.ClusterId };
        _meta.Save(_engine);
        var body = JsonSerializer.Serialize(plan);
        foreach (var (id, address) in _meta.Members)
        {
            if (id == _meta.NodeId)
            {
                continue;
            }

            try
            {
                var client = await PeerClientAsync(address, ct);
                var res = await client.CallAsync(new RpcRequest { Method = "bootstrap", Args = new() { ["plan"] = body } }, TimeSpan.FromSeconds(10), ct);
                if (res.Error is { } e)
                {
                    return RpcResponse.Fail(RpcErrorCode.Unavailable, $"member {id} ({address}) refused to bootstrap: {e.Message}");
                }
            }
            catch (Exception ex) when (ex is IOException or TimeoutException)
            {
                return RpcResponse.Fail(RpcErrorCode.Unavailable, $"member {id} ({address}) is unreachable: {ex.Message}");
            }
        }

        await BootstrapLocallyAsync(plan);
        _log($"cluster {plan.ClusterId} initialised with {plan.Ranges.Count} ranges on {_meta.Members.Count} servers");
        return new RpcResponse { Info = new() { ["cluster_id"] = plan.ClusterId.ToString(), ["ranges"] = plan.Ranges.Count.ToString(System.Globalization.CultureInfo.InvariantCulture) } };
    }

    private async Task<RpcResponse> HandleBootstrapAsync(RpcRequest request)
    {
        if (request.Args?.GetValueOrDefault("plan") is not { } body || JsonSerializer.Deserialize<ClusterMeta>(body) is not { } plan)
        {
            return RpcResponse.Fail(RpcErrorCode.BadRequest, "bootstrap: missing plan");
        }

        try
        {
            await BootstrapLocallyAsync(plan);
        }
        catch (InvalidOperationException ex)
        {
            return RpcResponse.Fail(RpcErrorCode.Refused, ex.Message);
        }

        return new RpcResponse();
    }

    private async Task<RpcClient> PeerClientAsync(string address, CancellationToken ct)
    {
        if (_peerClients.TryGetValue(address, out var c) && c.IsConnected)
        {
            return c;
        }

        var fresh = await RpcClient.ConnectAsync(address, TimeSpan.FromSeconds(3), ct);
        _peerClients[address] = fresh;
        if (c is not null)
        {
            await c.DisposeAsync();
        }

        return fresh;
    }

    // ---------------------------------------------------------------- background loops

    private async Task LeaseLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(_options.TickInterval, _stop.Token);
                var statuses = await _host.StatusAsync();
                _status = statuses.ToDictionary(s => s.Group);
                if (!_meta.Initialized)
                {
                    continue;
                }

                foreach (var s in statuses)
                {
                    if (s.Role == RaftRole.Leader)
                    {
                        MaybeRequestLease(s.Group);
                    }
                }
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (InvalidOperationException) when (_stop.IsCancellationRequested)
            {
                return;
            }
        }
    }

    private void MaybeRequestLease(ulong rangeId)
    {
        if (_machines.Get(rangeId) is not { Descriptor: not null } sm || _leaseProposals.ContainsKey(rangeId))
        {
            return;
        }

        var lease = sm.Lease;
        var now = _clock.Now();
        var me = _meta.NodeId;
        RangeCommand.LeaseCommand cmd;
        if (lease.Holder == me && lease.Start.CompareTo(_startedAt) < 0 && now.CompareTo(lease.Expiration) <= 0)
        {
            return; // our lease from before a restart: unusable; let it expire, then take a new one (below)
        }

        if (lease.Holder == me && now.CompareTo(lease.Expiration) <= 0)
        {
            if (lease.Expiration.WallNanos - now.WallNanos > _options.LeaseDuration.Ticks * 100 / 2)
            {
                return;
            }

            cmd = new RangeCommand.LeaseCommand(lease with { Expiration = now.Add(_options.LeaseDuration) }, lease.Sequence, Transfer: false);
        }
        else if (now.CompareTo(lease.Expiration) > 0)
        {
            cmd = new RangeCommand.LeaseCommand(new Lease(me, now, now.Add(_options.LeaseDuration), 0), lease.Sequence, Transfer: false);
        }
        else
        {
            return; // another holder's lease is still running: wait for it to expire
        }

        _leaseProposals[rangeId] = 0;
        _ = ProposeLeaseAsync(rangeId, cmd);
    }

    private async Task ProposeLeaseAsync(ulong rangeId, RangeCommand.LeaseCommand cmd)
    {
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
            timeout.CancelAfter(_options.LeaseDuration);
            await _host.ProposeAsync(rangeId, cmd.Encode(), timeout.Token);
        }
        catch (OperationCanceledException)
        {
        }
        finally
        {
            _leaseProposals.TryRemove(rangeId, out _);
        }
    }

    /// <summary>Measures the clock offset to every member every 2 s (RPC ping) for the skew monitor.</summary>
    private async Task ClockLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(TimeSpan.FromSeconds(2), _stop.Token);
            }
            catch (OperationCanceledException)
            {
                return;
            }

            foreach (var (id, address) in _meta.Members)
            {
                if (id == _meta.NodeId)
                {
                    continue;
                }

                try
                {
                    var client = await PeerClientAsync(address, _stop.Token);
                    var before = _clock.PhysicalNow;
                    var res = await client.CallAsync(new RpcRequest { Method = RpcMethods.Ping }, TimeSpan.FromSeconds(1), _stop.Token);
                    var after = _clock.PhysicalNow;
                    if (res.Timestamp is { } t && HlcTimestamp.TryParse(t, out var remote))
                    {
                        _skew.Record(id, TimeSpan.FromTicks((remote.WallNanos - ((before + after) / 2)) / 100));
                    }
                }
                catch (Exception ex) when (ex is IOException or TimeoutException or OperationCanceledException)
                {
                    // unreachable: no measurement
                }
            }
        }
    }

    // ---------------------------------------------------------------- RPC

    private async Task<RpcResponse> HandleAsync(RpcRequest request, CancellationToken ct)
    {
        switch (request.Method)
        {
            case RpcMethods.Ping:
                return new RpcResponse
                {
                    Timestamp = _clock.Now().ToString(),
                    Info = new() { ["node_id"] = NodeId.ToString(System.Globalization.CultureInfo.InvariantCulture), ["initialized"] = IsInitialized ? "true" : "false" },
                };
            case RpcMethods.Init:
                return await HandleInitAsync(ct);
            case "bootstrap":
                return await HandleBootstrapAsync(request);
            case RpcMethods.NodeStatus:
                return new RpcResponse { Nodes = NodeStatus() };
            case RpcMethods.ListRanges:
                return _meta.Initialized ? new RpcResponse { Ranges = ListRanges(), Nodes = NodeStatus() } : NotInitialized();
        }

        if (!_meta.Initialized)
        {
            return NotInitialized();
        }

        if (!_skew.IsHealthy(out var skewReason))
        {
            return RpcResponse.Fail(RpcErrorCode.Refused, $"node {NodeId} refuses to serve: {skewReason}");
        }

        switch (request.Method)
        {
            case RpcMethods.RangeLookup:
                return request.Key is { } k ? Lookup(k) : RpcResponse.Fail(RpcErrorCode.BadRequest, "range_lookup needs a key");
            case RpcMethods.Get:
                return ValidateKey(request.Key) is { } badKey
                    ? RpcResponse.Fail(RpcErrorCode.BadRequest, badKey)
                    : await Txn.ReadAsync(request.Key!, null, point: true, 0, null, ct);
            case RpcMethods.Scan:
                HlcTimestamp? at = null;
                if (request.Timestamp is { } atText)
                {
                    if (!HlcTimestamp.TryParse(atText, out var atTs) || atTs.IsZero)
                    {
                        return RpcResponse.Fail(RpcErrorCode.BadRequest, $"bad read timestamp '{atText}'");
                    }

                    at = atTs;
                }

                return await Txn.ReadAsync(request.Key is { Length: > 0 } scanStart ? scanStart : [0x01], request.EndKey, point: false, request.Limit, null, ct, at);
            case RpcMethods.Put:
            case RpcMethods.Delete:
            case RpcMethods.Batch:
                return await PlainWriteAsync(request, ct);
            default:
                if (request.Method == RpcMethods.RangeFeed)
                {
                    return await HandleRangeFeedAsync(request, ct);
                }

                if (request.Method.StartsWith("kv_", StringComparison.Ordinal))
                {
                    return await Txn.HandleAsync(request, ct);
                }

                if (request.Method.StartsWith("txn_", StringComparison.Ordinal))
                {
                    return await HandleSessionAsync(request, ct);
                }

                return RpcResponse.Fail(RpcErrorCode.BadRequest, $"unknown method '{request.Method}'");
        }
    }

    private RpcResponse NotInitialized() =>
        RpcResponse.Fail(RpcErrorCode.NotInitialized, "the cluster is not initialised yet: run `canopy init --host <any server>`");

    internal static string? ValidateKey(byte[]? key)
    {
        if (key is null || key.Length == 0)
        {
            return "a key is required";
        }

        if (key.Length > MvccKeys.MaxUserKeyLength)
        {
            return $"the key is {key.Length} bytes, more than the maximum of {MvccKeys.MaxUserKeyLength}";
        }

        return key[0] == SystemKeyPrefix ? "keys starting with byte 0x00 are reserved for the system" : null;
    }

    /// <summary>The local replica whose span holds <paramref name="key"/>, or an error with a hint.</summary>
    private (RangeStateMachine? Sm, RpcResponse? Error) Locate(byte[] key)
    {
        foreach (var sm in _machines.All)
        {
            if (sm.Descriptor is { } d && d.Contains(key))
            {
                return (sm, null);
            }
        }

        var layout = _meta.Ranges.Select(r => r.ToDescriptor()).FirstOrDefault(d => d.Contains(key));
        var hint = layout?.Replicas.FirstOrDefault() ?? 0;
        return (null, RpcResponse.Fail(RpcErrorCode.NotLeaseholder, $"no replica of the range of this key on node {NodeId}", hint, AddressOf(hint)));
    }

    /// <summary>Waits (briefly) until this server may serve the range, or says who may.</summary>
    /// <remarks>The timestamp is taken first and the lease checked at it: the caller must read or write at exactly
    /// that timestamp (a pause between a check and a later clock reading could leave the lease).</remarks>
    private async Task<(Lease? Lease, HlcTimestamp Timestamp, RpcResponse? Error)> EnsureLeaseAsync(RangeStateMachine sm, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + (2 * _options.LeaseDuration) + TimeSpan.FromSeconds(1);
        var me = _meta.NodeId;
        while (true)
        {
            var now = _clock.Now();
            var lease = sm.Lease;
            if (lease.CanServe(me, now, _options.MaxOffset) && lease.Start.CompareTo(_startedAt) >= 0)
            {
                return (lease, now, null);
            }

            _status.TryGetValue(sm.RangeId, out var status);
            var iLead = status?.Role == RaftRole.Leader;
            if (lease.Holder != me && lease.Holder != 0 && now.CompareTo(lease.Expiration) < 0 && !iLead)
            {
                return (null, default, RpcResponse.Fail(RpcErrorCode.NotLeaseholder, $"node {lease.Holder} holds the lease of range {sm.RangeId}", lease.Holder, AddressOf(lease.Holder)));
            }

            if (!iLead && status?.Leader is { } leader && leader != 0 && leader != me)
            {
                return (null, default, RpcResponse.Fail(RpcErrorCode.NotLeaseholder, $"node {leader} leads range {sm.RangeId}", leader, AddressOf(leader)));
            }

            if (DateTime.UtcNow > deadline)
            {
                return (null, default, RpcResponse.Fail(RpcErrorCode.Unavailable, $"range {sm.RangeId} has no leaseholder yet (election or lease change in progress)"));
            }

            if (iLead)
            {
                MaybeRequestLease(sm.RangeId);
            }

            await Task.Delay(10, ct);
        }
    }

    private async Task<RpcResponse> PlainWriteAsync(RpcRequest request, CancellationToken ct)
    {
        IReadOnlyList<KvWrite> writes = request.Method switch
        {
            RpcMethods.Put => [new KvWrite(request.Key ?? [], request.Value ?? [])],
            RpcMethods.Delete => [new KvWrite(request.Key ?? [], null)],
            _ => request.Writes ?? [],
        };
        if (writes.Count == 0)
        {
            return RpcResponse.Fail(RpcErrorCode.BadRequest, "nothing to write");
        }

        foreach (var w in writes)
        {
            if (ValidateKey(w.Key) is { } bad)
            {
                return RpcResponse.Fail(RpcErrorCode.BadRequest, bad);
            }
        }

        return await Txn.WriteAsync(writes[0].Key, writes.Select(w => new KeyWrite(w.Key, w.Value)).ToList(), null, "plain", [], [], false, ct);
    }

    private RpcResponse Lookup(byte[] key)
    {
        var (sm, error) = Locate(key);
        return sm is null ? error! : new RpcResponse { Range = Info(sm) };
    }

    private string? AddressOf(ulong node) => _meta.Members.GetValueOrDefault(node);

    private RangeInfo Info(RangeStateMachine sm)
    {
        var d = sm.Descriptor!;
        var lease = sm.Lease;
        var now = _clock.Now();
        var holder = lease.Holder != 0 && now.CompareTo(lease.Expiration) < 0 ? lease.Holder : 0;
        _status.TryGetValue(sm.RangeId, out var st);
        return new RangeInfo
        {
            RangeId = d.RangeId,
            StartKey = d.StartKey,
            EndKey = d.EndKey,
            Replicas = d.Replicas,
            Leaseholder = holder,
            LeaseholderAddress = AddressOf(holder),
            LeaseExpiration = lease.Holder == 0 ? null : lease.Expiration.ToString(),
            RaftLeader = st?.Leader ?? 0,
            Term = st?.Term ?? 0,
            AppliedIndex = sm.Applied,
        };
    }

    private List<RangeInfo> ListRanges()
    {
        var result = new List<RangeInfo>();
        foreach (var layout in _meta.Ranges)
        {
            if (_machines.Get(layout.RangeId) is { Descriptor: not null } sm)
            {
                result.Add(Info(sm));
            }
            else
            {
                var d = layout.ToDescriptor();
                result.Add(new RangeInfo { RangeId = d.RangeId, StartKey = d.StartKey, EndKey = d.EndKey, Replicas = d.Replicas });
            }
        }

        return result;
    }

    private List<NodeInfo> NodeStatus()
    {
        var now = _clock.Now();
        var leases = _machines.All.Where(m => m.Descriptor is not null && m.Lease.Holder != 0 && now.CompareTo(m.Lease.Expiration) < 0)
            .GroupBy(m => m.Lease.Holder).ToDictionary(g => g.Key, g => g.Count());
        return _meta.Members.OrderBy(m => m.Key).Select(m => new NodeInfo
        {
            NodeId = m.Key,
            Address = m.Value,
            State = m.Key == NodeId ? "self" : _host.IsConnected(m.Key) ? "up" : "down",
            Replicas = _meta.Ranges.Count(r => r.Replicas.Contains(m.Key)),
            Leases = leases.GetValueOrDefault(m.Key),
        }).ToList();
    }
}
