// A fake Canopy cluster for the client tests: real TCP listeners speaking the client protocol (RpcServerConnection
// does the framing), a shared in-memory "truth" (ranges, their leaseholders, the data) that every fake server answers
// from like a real one would (NotLeaseholder with a hint when it does not hold the lease, one range per scan), and
// per-server interceptors to inject errors, delays and silences.
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Canopy.Rpc;

namespace Canopy.Client.Tests;

internal sealed class FakeCluster : IAsyncDisposable
{
    private readonly object _gate = new();
    private readonly SortedDictionary<byte[], byte[]> _data = new(Comparer<byte[]>.Create((a, b) => KeyOrder.Compare(a, b)));
    private List<RangeInfo> _ranges = [];

    public List<FakeServer> Servers { get; } = [];

    /// <summary>Whether NotLeaseholder hints carry the leaseholder's address (else only its node id).</summary>
    public bool HintAddresses { get; set; } = true;

    public static FakeCluster Start(int servers)
    {
        var cluster = new FakeCluster();
        for (var i = 1; i <= servers; i++)
        {
            cluster.Servers.Add(FakeServer.Start((ulong)i, cluster));
        }

        // One range over the whole key space, lease on node 1.
        cluster.SetRanges((1, [], null, 1));
        return cluster;
    }

    public FakeServer this[ulong node] => Servers[(int)node - 1];

    /// <summary>Replaces the ranges: (id, start, end, leaseholder node).</summary>
    public void SetRanges(params (ulong Id, byte[] Start, byte[]? End, ulong Leaseholder)[] ranges)
    {
        lock (_gate)
        {
            _ranges = ranges.Select(r => new RangeInfo
            {
                RangeId = r.Id,
                StartKey = r.Start,
                EndKey = r.End,
                Replicas = Servers.Select(s => s.NodeId).ToArray(),
                Leaseholder = r.Leaseholder,
                RaftLeader = r.Leaseholder,
                Term = 1,
            }).ToList();
        }
    }

    public void MoveLease(ulong rangeId, ulong to)
    {
        lock (_gate)
        {
            var i = _ranges.FindIndex(r => r.RangeId == rangeId);
            _ranges[i] = _ranges[i] with { Leaseholder = to, RaftLeader = to, Term = _ranges[i].Term + 1 };
        }
    }

    public void Put(string key, string value)
    {
        lock (_gate)
        {
            _data[Encoding.UTF8.GetBytes(key)] = Encoding.UTF8.GetBytes(value);
        }
    }

    public string? Value(string key)
    {
        lock (_gate)
        {
            return _data.TryGetValue(Encoding.UTF8.GetBytes(key), out var v) ? Encoding.UTF8.GetString(v) : null;
        }
    }

    public RangeInfo RangeOf(byte[] key)
    {
        lock (_gate)
        {
            return Describe(_ranges.First(r => r.Contains(key)));
        }
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var s in Servers)
        {
            await s.DisposeAsync();
        }
    }

    /// <summary>What a correct server would answer.</summary>
    internal RpcResponse Serve(FakeServer self, RpcRequest request)
    {
        lock (_gate)
        {
            switch (request.Method)
            {
                case RpcMethods.Ping:
                    return new RpcResponse();
                case RpcMethods.NodeStatus:
                    return new RpcResponse
                    {
                        Nodes = Servers.Select(s => new NodeInfo { NodeId = s.NodeId, Address = s.Address, State = s.Stopped ? "down" : "up" }).ToList(),
                    };
                case RpcMethods.ListRanges:
                    return new RpcResponse { Ranges = _ranges.Select(Describe).ToList() };
                case RpcMethods.RangeLookup:
                    return new RpcResponse { Range = Describe(_ranges.First(r => r.Contains(request.Key ?? []))) };
                case RpcMethods.Init:
                    return RpcResponse.Fail(RpcErrorCode.AlreadyInitialized, "cluster is already initialised");
            }

            if (request.Key is null)
            {
                return RpcResponse.Fail(RpcErrorCode.BadRequest, "key missing");
            }

            var range = _ranges.First(r => r.Contains(request.Key));
            if (range.Leaseholder != self.NodeId)
            {
                var holder = this[range.Leaseholder];
                return RpcResponse.Fail(RpcErrorCode.NotLeaseholder, $"n{self.NodeId} does not hold the lease of r{range.RangeId}", range.Leaseholder, HintAddresses ? holder.Address : null);
            }

            var info = Describe(range);
            switch (request.Method)
            {
                case RpcMethods.Get:
                    return _data.TryGetValue(request.Key, out var v)
                        ? new RpcResponse { Found = true, Value = v, Range = info }
                        : new RpcResponse { Range = info };
                case RpcMethods.Put:
                    _data[request.Key] = request.Value ?? [];
                    return new RpcResponse { Range = info };
                case RpcMethods.Delete:
                    _data.Remove(request.Key);
                    return new RpcResponse { Range = info };
                case RpcMethods.Batch:
                    foreach (var w in request.Writes ?? [])
                    {
                        if (!range.Contains(w.Key))
                        {
                            return RpcResponse.Fail(RpcErrorCode.BadRequest, "batch spans ranges");
                        }
                    }

                    foreach (var w in request.Writes ?? [])
                    {
                        if (w.Value is null)
                        {
                            _data.Remove(w.Key);
                        }
                        else
                        {
                            _data[w.Key] = w.Value;
                        }
                    }

                    return new RpcResponse { Range = info };
                case RpcMethods.Scan:
                    // Serves this range only: [key, min(end, range end)), at most Limit rows.
                    var end = request.EndKey;
                    if (range.EndKey is not null && (end is null || KeyOrder.Compare(range.EndKey, end) < 0))
                    {
                        end = range.EndKey;
                    }

                    var rows = _data
                        .Where(kv => KeyOrder.Compare(kv.Key, request.Key) >= 0 && (end is null || KeyOrder.Compare(kv.Key, end) < 0))
                        .Take(request.Limit > 0 ? request.Limit : int.MaxValue)
                        .Select(kv => new KvPair(kv.Key, kv.Value))
                        .ToList();
                    return new RpcResponse { Rows = rows, Range = info };
                default:
                    return RpcResponse.Fail(RpcErrorCode.BadRequest, $"unknown method '{request.Method}'");
            }
        }
    }

    private RangeInfo Describe(RangeInfo r) => r with { LeaseholderAddress = this[r.Leaseholder].Address };
}

/// <summary>
/// One fake server. <see cref="Intercept"/> runs first: a non-null answer replaces the cluster's (it may also never
/// complete: a hung server).
/// </summary>
internal sealed class FakeServer : IAsyncDisposable
{
    private readonly FakeCluster _cluster;
    private readonly TcpListener _listener;
    private readonly CancellationTokenSource _stop = new();
    private readonly ConcurrentBag<Task> _connections = [];
    private readonly Task _accepting;
    private readonly ConcurrentDictionary<string, int> _calls = new();

    private FakeServer(ulong nodeId, FakeCluster cluster)
    {
        NodeId = nodeId;
        _cluster = cluster;
        _listener = new TcpListener(IPAddress.Loopback, 0);
        _listener.Start();
        Address = $"127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}";
        _accepting = Task.Run(AcceptLoopAsync);
    }

    public ulong NodeId { get; }

    public string Address { get; }

    public bool Stopped => _stop.IsCancellationRequested;

    public Func<RpcRequest, Task<RpcResponse?>>? Intercept { get; set; }

    public int Calls(string method) => _calls.TryGetValue(method, out var n) ? n : 0;

    public static FakeServer Start(ulong nodeId, FakeCluster cluster) => new(nodeId, cluster);

    /// <summary>Closes the listener and every connection: new connections are refused.</summary>
    public async ValueTask DisposeAsync()
    {
        if (_stop.IsCancellationRequested)
        {
            return;
        }

        await _stop.CancelAsync();
        _listener.Stop();
        try
        {
            await _accepting;
            await Task.WhenAll(_connections);
        }
        catch (Exception)
        {
            // stopping
        }
    }

    private async Task AcceptLoopAsync()
    {
        try
        {
            while (!_stop.IsCancellationRequested)
            {
                var socket = await _listener.AcceptSocketAsync(_stop.Token);
                _connections.Add(Task.Run(() => ServeAsync(socket)));
            }
        }
        catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException)
        {
        }
    }

    private async Task ServeAsync(Socket socket)
    {
        try
        {
            var magic = new byte[4];
            var read = 0;
            while (read < 4)
            {
                var n = await socket.ReceiveAsync(magic.AsMemory(read), SocketFlags.None, _stop.Token);
                if (n == 0)
                {
                    socket.Dispose();
                    return;
                }

                read += n;
            }

            if (!magic.AsSpan().SequenceEqual("CNPC"u8))
            {
                socket.Dispose();
                return;
            }

            await RpcServerConnection.ServeAsync(socket, HandleAsync, _ => { }, _stop.Token);
        }
        catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException or IOException)
        {
            socket.Dispose();
        }
    }

    private async Task<RpcResponse> HandleAsync(RpcRequest request, CancellationToken ct)
    {
        _calls.AddOrUpdate(request.Method, 1, (_, n) => n + 1);
        if (Intercept is { } intercept && await intercept(request).WaitAsync(ct) is { } answer)
        {
            return answer;
        }

        return _cluster.Serve(this, request);
    }
}

internal static class Bytes
{
    public static byte[] Of(string s) => Encoding.UTF8.GetBytes(s);

    public static string Text(byte[]? b) => b is null ? "<null>" : Encoding.UTF8.GetString(b);
}
