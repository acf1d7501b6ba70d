// GridCluster: real `canopy start` processes (the leader grid: ranges with leases) for the integration tests.
//
// - Each server is `dotnet <test output>/canopy.dll start --store .. --listen-addr .. --http-addr .. --join a,b,c`
//   with its own store directory and two free loopback ports kept across restarts (as RaftCluster does; the process
//   helpers, logs and SIGKILL are RaftCluster's). `canopy init` is CanopyClient.InitAsync.
// - A server is "up" when GET /health answers on its --http-addr (the listen port is bound before the HTTP one).
// - Per-server views (list_ranges) go over a raw RpcClient to that server alone, so they are that server's own
//   replicas, not whatever a routing client picks.
// - GridLoad: closed-loop writers of unique keys through one CanopyClient, recording every acknowledged put, and every
//   put whose outcome is unknown (CanopyAmbiguousException, or the client's deadline passing).
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text;
using Canopy.Client;
using Canopy.Rpc;
using Xunit.Abstractions;
using Xunit.Sdk;

namespace Canopy.Integration.Tests;

/// <summary>A cluster of real `canopy start` processes on loopback; see the file header.</summary>
public sealed class GridCluster : IAsyncDisposable
{
    private readonly ITestOutputHelper? _output;
    private readonly HttpClient _http = new(new SocketsHttpHandler { ConnectTimeout = TimeSpan.FromSeconds(2), UseProxy = false }) { Timeout = TimeSpan.FromSeconds(3) };
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private bool _disposed;

    private GridCluster(string root, IReadOnlyList<RaftServer> servers, ITestOutputHelper? output)
    {
        Root = root;
        Servers = servers;
        _output = output;
    }

    public string Root { get; }

    /// <summary>Keep <see cref="Root"/> after dispose (set when a test fails, or with CANOPY_KEEP_TEST_DIRS=1).</summary>
    public bool KeepFiles { get; set; } = Environment.GetEnvironmentVariable("CANOPY_KEEP_TEST_DIRS") is "1";

    public IReadOnlyList<RaftServer> Servers { get; }

    public IReadOnlyList<ulong> Ids => Servers.Select(s => s.Id).ToList();

    /// <summary>Every server's --listen-addr (what clients connect to), in id order.</summary>
    public IReadOnlyList<string> Addresses => Servers.Select(s => s.ListenAddress).ToList();

    public string Join => string.Join(',', Addresses);

    public RaftServer this[ulong id] => Servers.Single(s => s.Id == id);

    /// <summary>Starts <paramref name="n"/> servers, waits until each is up and (if asked) initialises the cluster
    /// and waits until every range has a leaseholder.</summary>
    public static async Task<GridCluster> StartAsync(ITestOutputHelper? output, string name, int n = 3, bool init = true)
    {
        if (!File.Exists(RaftCluster.CanopyDll))
        {
            throw new XunitException($"{RaftCluster.CanopyDll} is missing: the test project must reference apps/canopy/canopy.csproj");
        }

        var root = Path.Combine(Path.GetTempPath(), $"canopy-grid-{name}-{Guid.NewGuid().ToString("N")[..12]}");
        Directory.CreateDirectory(root);
        var ports = RaftCluster.FreePorts(2 * n);
        var servers = Enumerable.Range(1, n)
            .Select(i => new RaftServer((ulong)i, ports[2 * (i - 1)], ports[(2 * (i - 1)) + 1], Path.Combine(root, $"s{i}"), Path.Combine(root, $"s{i}.log")))
            .ToList();
        var cluster = new GridCluster(root, servers, output);
        try
        {
            foreach (var s in servers)
            {
                cluster.Launch(s);
            }

            await cluster.WaitUpAsync(cluster.Ids, TimeSpan.FromSeconds(60));
            cluster.Log($"{n} servers up in {root}");
            if (init)
            {
                await using var client = await cluster.ConnectAsync();
                await client.InitAsync();
                var elapsed = await cluster.WaitLeaseholdersAsync(cluster.Ids, TimeSpan.FromSeconds(30));
                cluster.Log($"initialised; every range has a leaseholder {elapsed.TotalMilliseconds:0} ms after init");
            }

            return cluster;
        }
        catch (Exception ex)
        {
            cluster.KeepFiles = true;
            var failure = ex as XunitException ?? cluster.Failure($"starting the cluster failed: {ex.GetType().Name}: {ex.Message}", ex);
            await cluster.DisposeAsync();
            throw failure;
        }
    }

    public IReadOnlyList<string> StartArgs(RaftServer s) =>
        ["start", "--store", s.StoreDirectory, "--listen-addr", s.ListenAddress, "--http-addr", s.HttpAddress, "--join", Join];

    /// <summary>A client of the cluster: every server's address unless <paramref name="addresses"/> is given.</summary>
    public Task<CanopyClient> ConnectAsync(IReadOnlyList<string>? addresses = null, CanopyClientOptions? options = null) =>
        CanopyClient.ConnectAsync(addresses ?? Addresses, options);

    /// <summary>SIGKILL; returns when the process is gone.</summary>
    public async Task KillAsync(ulong id)
    {
        var s = this[id];
        var p = s.Process ?? throw new InvalidOperationException($"server {id} was never started");
        RaftCluster.TryKill(p);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        try
        {
            await p.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            throw Failure($"server {id} (pid {p.Id}) did not exit within 20 s of SIGKILL");
        }

        RaftCluster.Forget(p);
        s.Append($"==== [test] SIGKILL at {DateTime.UtcNow:HH:mm:ss.fff} ====");
        Log($"SIGKILLed s{id} (pid {p.Id})");
    }

    /// <summary>Starts a stopped server again on its store and ports; returns when it is up.</summary>
    public async Task RestartAsync(ulong id) => await RestartAsync([id]);

    /// <summary>Starts the given stopped servers at once; returns when all are up.</summary>
    public async Task RestartAsync(IReadOnlyList<ulong> ids)
    {
        foreach (var id in ids)
        {
            var s = this[id];
            if (s.IsRunning)
            {
                throw new InvalidOperationException($"server {id} is still running");
            }

            s.Process?.Dispose();
            Launch(s);
        }

        await WaitUpAsync(ids, TimeSpan.FromSeconds(60));
        Log($"restarted {string.Join(", ", ids.Select(i => $"s{i}"))}");
    }

    // ------------------------------------------------------------------ per-server views

    /// <summary>The ranges as server <paramref name="id"/> itself sees them (list_ranges to it alone); null if it does not answer.</summary>
    public async Task<IReadOnlyList<RangeInfo>?> RangesOnAsync(ulong id)
    {
        try
        {
            await using var rpc = await RpcClient.ConnectAsync(this[id].ListenAddress, TimeSpan.FromSeconds(2));
            var response = await rpc.CallAsync(new RpcRequest { Method = RpcMethods.ListRanges }, TimeSpan.FromSeconds(3));
            return response.Error is null ? response.Ranges : null;
        }
        catch (Exception ex) when (ex is IOException or TimeoutException or OperationCanceledException or System.Net.Sockets.SocketException)
        {
            return null;
        }
    }

    /// <summary>
    /// Waits until every server in <paramref name="ids"/> answers and names, for every range, the same live
    /// leaseholder, one of <paramref name="ids"/>. Returns the time it took.
    /// </summary>
    public Task<TimeSpan> WaitLeaseholdersAsync(IReadOnlyList<ulong> ids, TimeSpan timeout) =>
        WaitUntilAsync(
            async () =>
            {
                var views = await Task.WhenAll(ids.Select(RangesOnAsync));
                for (var i = 0; i < ids.Count; i++)
                {
                    if (views[i] is not { Count: > 0 })
                    {
                        return $"s{ids[i]} does not list its ranges";
                    }
                }

                var problems = new List<string>();
                foreach (var r in views[0]!)
                {
                    var holders = views.Select(v => v!.FirstOrDefault(x => x.RangeId == r.RangeId)?.Leaseholder ?? 0).Distinct().ToList();
                    if (holders.Count != 1 || !ids.Contains(holders[0]))
                    {
                        problems.Add($"r{r.RangeId}: leaseholder {string.Join("/", holders)}");
                    }
                }

                return problems.Count == 0 ? null : string.Join("; ", problems);
            },
            timeout,
            $"every range to have a leaseholder among {string.Join(",", ids.Select(i => $"s{i}"))}");

    // ------------------------------------------------------------------ conditions and failures

    /// <summary>Polls <paramref name="problem"/> (null = satisfied) until satisfied or the deadline; then fails with the last problem.</summary>
    public async Task<TimeSpan> WaitUntilAsync(Func<Task<string?>> problem, TimeSpan timeout, string what, TimeSpan? poll = null)
    {
        var start = Stopwatch.GetTimestamp();
        while (true)
        {
            var p = await problem();
            var elapsed = Stopwatch.GetElapsedTime(start);
            if (p is null)
            {
                return elapsed;
            }

            if (elapsed > timeout)
            {
                throw Failure($"timed out after {timeout.TotalSeconds:0.#} s waiting for {what}; still: {p}");
            }

            await Task.Delay(poll ?? TimeSpan.FromMilliseconds(50));
        }
    }

    public XunitException Failure(string message, Exception? inner = null) => new($"{message}\n{LogTails()}", inner);

    public void Check(bool condition, string message)
    {
        if (!condition)
        {
            throw Failure(message);
        }
    }

    public string LogTails()
    {
        var sb = new StringBuilder();
        foreach (var s in Servers)
        {
            var state = s.Process is null ? "never started" : s.IsRunning ? $"running, pid {s.Process.Id}" : "exited";
            sb.Append(CultureInfo.InvariantCulture, $"---- s{s.Id} [{state}] tail of {s.LogPath} ----\n").Append(s.Tail()).Append('\n');
        }

        return sb.ToString();
    }

    public void Log(string message) => _output?.WriteLine($"[{_clock.Elapsed.TotalSeconds,7:0.000}s] {message}");

    public async ValueTask DisposeAsync()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        foreach (var s in Servers)
        {
            if (s.Process is { } p)
            {
                RaftCluster.TryKill(p);
            }
        }

        foreach (var s in Servers)
        {
            if (s.Process is { } p)
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
                try
                {
                    await p.WaitForExitAsync(cts.Token);
                }
                catch (OperationCanceledException)
                {
                    _output?.WriteLine($"s{s.Id} (pid {p.Id}) still running 20 s after SIGKILL");
                }

                RaftCluster.Forget(p);
                p.Dispose();
            }

            s.CloseLog();
        }

        _http.Dispose();
        if (KeepFiles)
        {
            _output?.WriteLine($"stores and logs kept in {Root}");
            return;
        }

        try
        {
            Directory.Delete(Root, recursive: true);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            _output?.WriteLine($"could not delete {Root}: {ex.Message}");
        }
    }

    // ------------------------------------------------------------------ processes

    private void Launch(RaftServer s)
    {
        s.Starts++;
        var args = StartArgs(s);
        s.Append($"==== [test] start #{s.Starts} at {DateTime.UtcNow:HH:mm:ss.fff}: canopy {string.Join(' ', args)} ====");
        s.Process = RaftCluster.StartCanopy(args, s.Append, Root);
    }

    private Task<TimeSpan> WaitUpAsync(IReadOnlyList<ulong> ids, TimeSpan timeout) =>
        WaitUntilAsync(
            async () =>
            {
                var exited = ids.Where(id => !this[id].IsRunning).ToList();
                if (exited.Count > 0)
                {
                    throw Failure($"server(s) {string.Join(", ", exited.Select(id => $"s{id}"))} exited during start-up");
                }

                var silent = new List<string>();
                foreach (var id in ids)
                {
                    if (!await HealthAnswersAsync(this[id]))
                    {
                        silent.Add($"s{id}");
                    }
                }

                return silent.Count == 0 ? null : $"{string.Join(", ", silent)} not answering GET /health";
            },
            timeout,
            $"{string.Join(", ", ids.Select(id => $"s{id}"))} to answer GET /health",
            TimeSpan.FromMilliseconds(100));

    private async Task<bool> HealthAnswersAsync(RaftServer s)
    {
        try
        {
            using var resp = await _http.GetAsync(new Uri(s.BaseUri, "/health"));
            return resp.StatusCode == HttpStatusCode.OK;
        }
        catch (Exception ex) when (ex is HttpRequestException or OperationCanceledException or IOException)
        {
            return false;
        }
    }
}

/// <summary>
/// Closed-loop writers of unique keys through one <see cref="CanopyClient"/>. Writer w's i-th key is
/// <c>prefix(i + w) + tag-w-i</c>, the prefixes chosen by the caller (one per range, to spread the keys).
/// </summary>
public sealed class GridLoad
{
    private readonly CanopyClient _client;
    private readonly IReadOnlyList<string> _prefixes;
    private readonly string _tag;
    private readonly CancellationTokenSource _stop = new();
    private readonly ConcurrentQueue<GridAck> _acked = new();
    private readonly ConcurrentDictionary<string, string> _uncertain = new(StringComparer.Ordinal);
    private readonly ConcurrentQueue<string> _errors = new();
    private Task _writers = Task.CompletedTask;
    private int _ambiguous;
    private int _unavailable;

    public GridLoad(CanopyClient client, IReadOnlyList<string> prefixes, string tag)
    {
        _client = client;
        _prefixes = prefixes;
        _tag = tag;
    }

    /// <summary>Every acknowledged put (PutAsync returned).</summary>
    public IReadOnlyCollection<GridAck> Acked => _acked;

    /// <summary>Puts whose outcome is unknown (key → value attempted): either outcome is allowed.</summary>
    public IReadOnlyDictionary<string, string> Uncertain => _uncertain;

    /// <summary>Any other failure (a bug): the test fails on them.</summary>
    public IReadOnlyCollection<string> Errors => _errors;

    public int Ambiguous => _ambiguous;

    public int Unavailable => _unavailable;

    public void Start(int writers) =>
        _writers = Task.WhenAll(Enumerable.Range(0, writers).Select(w => Task.Run(() => WriteAsync(w))));

    /// <summary>Stops starting puts and waits for the ones in flight (each ends within the client's deadline).</summary>
    public async Task StopAsync()
    {
        await _stop.CancelAsync();
        await _writers;
    }

    private async Task WriteAsync(int w)
    {
        for (var i = 0; !_stop.IsCancellationRequested; i++)
        {
            var key = $"{_prefixes[(i + w) % _prefixes.Count]}{_tag}-{w}-{i:D6}";
            var value = $"v{w}.{i}.{Guid.NewGuid().ToString("N")[..8]}";
            var started = Stopwatch.GetTimestamp();
            try
            {
                await _client.PutAsync(Encoding.UTF8.GetBytes(key), Encoding.UTF8.GetBytes(value));
                _acked.Enqueue(new GridAck(key, value, started, Stopwatch.GetTimestamp()));
            }
            catch (CanopyAmbiguousException)
            {
                Interlocked.Increment(ref _ambiguous);
                _uncertain[key] = value;
            }
            catch (CanopyUnavailableException)
            {
                Interlocked.Increment(ref _unavailable);
                _uncertain[key] = value;
                await Task.Delay(50);
            }
            catch (Exception ex)
            {
                _uncertain[key] = value;
                _errors.Enqueue($"{key}: {ex.GetType().Name}: {ex.Message}");
                await Task.Delay(50);
            }
        }
    }
}

/// <summary>An acknowledged put; timestamps are Stopwatch ticks.</summary>
public sealed record GridAck(string Key, string Value, long StartedAt, long AckedAt);
