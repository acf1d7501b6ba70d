// RaftCluster: real `canopy raft-node` processes for the integration tests.
//
// - Each server is `dotnet <test output>/canopy.dll raft-node ...` (the project reference puts canopy.dll, its
//   runtimeconfig/deps files and RocksDB's native library next to the tests), with its own store directory and two
//   free loopback ports (peer transport and HTTP admin API) chosen by binding port 0, kept across restarts.
// - stdout and stderr of every process go to <temp>/sN.log (appended across restarts) and to an in-memory tail that
//   failure messages quote.
// - Kill is SIGKILL (Process.Kill(entireProcessTree: true)); Restart starts the same command on the same store and
//   ports. DisposeAsync kills whatever is still running, always; a ProcessExit hook does the same if the test host
//   goes away first.
// - Every wait is a condition poll with a deadline; every HTTP call is retried on connection errors by its caller.
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Xunit.Abstractions;
using Xunit.Sdk;

namespace Canopy.Integration.Tests;

/// <summary>One replica as reported by GET /raft/status.</summary>
public sealed record ReplicaState(ulong Group, string Role, ulong Term, ulong Leader, ulong Commit, ulong Applied, ulong LastIndex, bool Quiesced)
{
    public bool IsLeader => Role == "Leader";
}

/// <summary>An acknowledged (HTTP 200) put.</summary>
public sealed record PutAck(ulong Group, string Key, string Value, ulong Server, ulong Index, ulong Term, TimeSpan Elapsed, int Attempts);

/// <summary>A server process of a <see cref="RaftCluster"/>.</summary>
public sealed class RaftServer
{
    private const int TailLines = 60;
    private readonly Lock _lock = new();
    private readonly Queue<string> _tail = new();
    private StreamWriter? _log;

    internal RaftServer(ulong id, int listenPort, int httpPort, string storeDirectory, string logPath)
    {
        Id = id;
        ListenPort = listenPort;
        HttpPort = httpPort;
        StoreDirectory = storeDirectory;
        LogPath = logPath;
    }

    public ulong Id { get; }

    public int ListenPort { get; }

    public int HttpPort { get; }

    public string ListenAddress => $"127.0.0.1:{ListenPort}";

    public string HttpAddress => $"127.0.0.1:{HttpPort}";

    public Uri BaseUri => new($"http://{HttpAddress}");

    public string StoreDirectory { get; }

    public string LogPath { get; }

    public Process? Process { get; internal set; }

    public int Starts { get; internal set; }

    public bool IsRunning
    {
        get
        {
            var p = Process;
            if (p is null)
            {
                return false;
            }

            try
            {
                return !p.HasExited;
            }
            catch (InvalidOperationException)
            {
                return false;
            }
        }
    }

    internal void Append(string line)
    {
        lock (_lock)
        {
            _log ??= new StreamWriter(new FileStream(LogPath, FileMode.Append, FileAccess.Write, FileShare.ReadWrite)) { AutoFlush = true };
            _log.WriteLine(line);
            _tail.Enqueue(line);
            while (_tail.Count > TailLines)
            {
                _tail.Dequeue();
            }
        }
    }

    internal string Tail()
    {
        lock (_lock)
        {
            return string.Join('\n', _tail);
        }
    }

    /// <summary>The whole log file so far (every start of this server).</summary>
    public string ReadLog()
    {
        using var stream = new FileStream(LogPath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }

    internal void CloseLog()
    {
        lock (_lock)
        {
            _log?.Dispose();
            _log = null;
        }
    }
}

/// <summary>A cluster of real `canopy raft-node` processes on loopback; see the file header.</summary>
public sealed class RaftCluster : IAsyncDisposable
{
    private static readonly JsonSerializerOptions Json = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };
    private static readonly ConcurrentDictionary<int, Process> AllProcesses = new();

    private readonly ITestOutputHelper? _output;
    private readonly HttpClient _http;
    private readonly ConcurrentDictionary<ulong, ulong> _leaderHints = new();
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private bool _disposed;

    static RaftCluster()
    {
        // Should the test host exit without disposing a cluster, take its servers along.
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            foreach (var p in AllProcesses.Values)
            {
                TryKill(p);
            }
        };
    }

    private RaftCluster(string root, IReadOnlyList<RaftServer> servers, int groups, ITestOutputHelper? output)
    {
        Root = root;
        Servers = servers;
        Groups = groups;
        _output = output;
        _http = new HttpClient(new SocketsHttpHandler
        {
            ConnectTimeout = TimeSpan.FromSeconds(3),
            PooledConnectionIdleTimeout = TimeSpan.FromSeconds(10),
            MaxConnectionsPerServer = 32,
        })
        {
            Timeout = Timeout.InfiniteTimeSpan,
        };
    }

    /// <summary>The directory with the stores and the logs (deleted on dispose unless <see cref="KeepFiles"/>).</summary>
    public string Root { get; }

    /// <summary>Keep <see cref="Root"/> after dispose (set when a test fails, or with CANOPY_KEEP_TEST_DIRS=1).</summary>
    public bool KeepFiles { get; set; } = Environment.GetEnvironmentVariable("CANOPY_KEEP_TEST_DIRS") is "1";

    public IReadOnlyList<RaftServer> Servers { get; }

    public int Groups { get; }

    /// <summary>--election-ticks of every server (ticks are 50 ms).</summary>
    public int ElectionTicks { get; private init; } = 10;

    public IEnumerable<ulong> GroupIds => Enumerable.Range(1, Groups).Select(g => (ulong)g);

    public IReadOnlyList<ulong> Ids => Servers.Select(s => s.Id).ToList();

    public IReadOnlyList<ulong> RunningIds => Servers.Where(s => s.IsRunning).Select(s => s.Id).ToList();

    public string Members => string.Join(',', Servers.Select(s => $"{s.Id}={s.ListenAddress}"));

    public static string CanopyDll => Path.Combine(AppContext.BaseDirectory, "canopy.dll");

    public RaftServer this[ulong id] => Servers.Single(s => s.Id == id);

    /// <summary>Starts <paramref name="n"/> servers and waits until each answers GET /raft/status.</summary>
    public static async Task<RaftCluster> StartAsync(ITestOutputHelper? output, int n = 3, int groups = 32, string name = "cluster", int electionTicks = 10)
    {
        if (!File.Exists(CanopyDll))
        {
            throw new XunitException($"{CanopyDll} is missing: the test project must reference apps/canopy/canopy.csproj");
        }

        var root = Path.Combine(Path.GetTempPath(), $"canopy-it-{name}-{Guid.NewGuid().ToString("N")[..12]}");
        Directory.CreateDirectory(root);
        var ports = FreePorts(2 * n);
        var servers = Enumerable.Range(1, n)
            .Select(i => new RaftServer((ulong)i, ports[2 * (i - 1)], ports[(2 * (i - 1)) + 1], Path.Combine(root, $"s{i}"), Path.Combine(root, $"s{i}.log")))
            .ToList();
        var cluster = new RaftCluster(root, servers, groups, output) { ElectionTicks = electionTicks };
        try
        {
            foreach (var s in servers)
            {
                cluster.Launch(s);
            }

            await cluster.WaitReachableAsync(cluster.Ids, TimeSpan.FromSeconds(60));
            cluster.Log($"started {n} servers x {groups} groups in {root}");
            return cluster;
        }
        catch (Exception ex)
        {
            cluster.KeepFiles = true;
            var failure = ex as XunitException ?? cluster.Failure($"starting the cluster failed: {ex.Message}", ex);
            await cluster.DisposeAsync();
            throw failure;
        }
    }

    /// <summary>SIGKILL: the process and its children, at once; returns when the process is gone.</summary>
    public async Task KillAsync(ulong id)
    {
        var s = this[id];
        var p = s.Process ?? throw new InvalidOperationException($"server {id} was never started");
        TryKill(p);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        try
        {
            await p.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            throw Failure($"server {id} (pid {p.Id}) did not exit within 20 s of SIGKILL");
        }

        AllProcesses.TryRemove(p.Id, out _);
        s.Append($"==== [test] SIGKILL at {DateTime.UtcNow:HH:mm:ss.fff}, exit code {p.ExitCode} ====");
        Log($"SIGKILLed s{id} (pid {p.Id})");
    }

    /// <summary>Starts the server again on its store and ports; returns when its admin API answers.</summary>
    public async Task RestartAsync(ulong id, TimeSpan? timeout = null)
    {
        var s = this[id];
        if (s.IsRunning)
        {
            throw new InvalidOperationException($"server {id} is still running");
        }

        s.Process?.Dispose();
        Launch(s);
        await WaitReachableAsync([id], timeout ?? TimeSpan.FromSeconds(45));
        Log($"restarted s{id}");
    }

    /// <summary>Starts every stopped server at once; returns when all answer.</summary>
    public async Task RestartAllAsync(TimeSpan? timeout = null)
    {
        var stopped = Servers.Where(s => !s.IsRunning).ToList();
        foreach (var s in stopped)
        {
            s.Process?.Dispose();
            Launch(s);
        }

        await WaitReachableAsync(stopped.Select(s => s.Id).ToList(), timeout ?? TimeSpan.FromSeconds(60));
        Log($"restarted {string.Join(", ", stopped.Select(s => $"s{s.Id}"))}");
    }

    // ------------------------------------------------------------------ HTTP

    /// <summary>GET /raft/status of one server; null if it does not answer (down, starting, overloaded).</summary>
    public async Task<ReplicaState[]?> TryStatusAsync(ulong id, TimeSpan? timeout = null)
    {
        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(3));
        try
        {
            using var resp = await _http.GetAsync(new Uri(this[id].BaseUri, "/raft/status"), cts.Token);
            if (resp.StatusCode != HttpStatusCode.OK)
            {
                return null;
            }

            var body = await resp.Content.ReadAsStringAsync(cts.Token);
            return JsonSerializer.Deserialize<ReplicaState[]>(body, Json)
                ?? throw Failure($"s{id}: /raft/status returned {body}");
        }
        catch (Exception ex) when (IsTransient(ex))
        {
            return null;
        }
    }

    /// <summary>Status of each server (null when it did not answer).</summary>
    public async Task<Dictionary<ulong, ReplicaState[]?>> StatusAllAsync(IEnumerable<ulong> ids)
    {
        var list = ids.ToList();
        var results = await Task.WhenAll(list.Select(id => TryStatusAsync(id)));
        return list.Zip(results).ToDictionary(x => x.First, x => x.Second);
    }

    /// <summary>
    /// Puts key=value in the group through Raft, following 421 leader hints, retrying refused connections, 503 and
    /// 504 (a retried put of the same value is idempotent) until a 200 or the deadline.
    /// </summary>
    public async Task<PutAck> PutAsync(ulong group, string key, string value, TimeSpan? timeout = null, TimeSpan? retryDelay = null)
    {
        var start = Stopwatch.GetTimestamp();
        var deadline = timeout ?? TimeSpan.FromSeconds(30);
        var delay = retryDelay ?? TimeSpan.FromMilliseconds(25);
        var target = _leaderHints.TryGetValue(group, out var hint) ? hint : Ids[(int)(group % (ulong)Servers.Count)];
        var attempts = 0;
        var history = new List<string>();
        while (true)
        {
            if (Stopwatch.GetElapsedTime(start) > deadline)
            {
                throw Failure($"put g{group} {key} not acknowledged within {deadline.TotalSeconds:0.#} s after {attempts} attempts; last: {string.Join("; ", history.TakeLast(8))}");
            }

            if (!this[target].IsRunning)
            {
                target = NextRunning(target);
            }

            attempts++;
            var uri = new Uri(this[target].BaseUri, $"/raft/propose?group={group}&key={Uri.EscapeDataString(key)}");
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(8));
            HttpStatusCode code;
            string body;
            try
            {
                using var content = new StringContent(value, Encoding.UTF8);
                using var resp = await _http.PostAsync(uri, content, cts.Token);
                code = resp.StatusCode;
                body = await resp.Content.ReadAsStringAsync(cts.Token);
            }
            catch (Exception ex) when (IsTransient(ex))
            {
                history.Add($"s{target}: {ex.GetType().Name}");
                target = NextRunning(target);
                await Task.Delay(delay);
                continue;
            }

            switch ((int)code)
            {
                case 200:
                    {
                        using var doc = JsonDocument.Parse(body);
                        _leaderHints[group] = target;
                        return new PutAck(group, key, value, target, doc.RootElement.GetProperty("index").GetUInt64(), doc.RootElement.GetProperty("term").GetUInt64(), Stopwatch.GetElapsedTime(start), attempts);
                    }

                case 421:
                    {
                        using var doc = JsonDocument.Parse(body);
                        var leader = doc.RootElement.GetProperty("leader").GetUInt64();
                        history.Add($"s{target}: 421 leader={leader}");
                        if (leader != 0 && leader != target && Servers.Any(s => s.Id == leader) && this[leader].IsRunning)
                        {
                            target = leader;
                            continue; // follow the hint at once
                        }

                        target = NextRunning(target);
                        break;
                    }

                case 503 or 504:
                    history.Add($"s{target}: {(int)code} {body}");
                    break;
                default:
                    throw Failure($"put g{group} {key} on s{target}: unexpected HTTP {(int)code}: {body}");
            }

            await Task.Delay(delay);
        }
    }

    /// <summary>Puts many keys with bounded concurrency; every one must be acknowledged.</summary>
    public async Task<List<PutAck>> PutManyAsync(IEnumerable<(ulong Group, string Key, string Value)> puts, int parallelism = 8, TimeSpan? timeoutEach = null)
    {
        var acks = new ConcurrentBag<PutAck>();
        await Parallel.ForEachAsync(puts, new ParallelOptions { MaxDegreeOfParallelism = parallelism }, async (p, _) =>
            acks.Add(await PutAsync(p.Group, p.Key, p.Value, timeoutEach)));
        return [.. acks];
    }

    /// <summary>GET /raft/get on one server: (true, value), (true, null) for 404, (false, null) if it did not answer.</summary>
    public async Task<(bool Answered, string? Value)> TryGetAsync(ulong id, ulong group, string key)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(3));
        try
        {
            using var resp = await _http.GetAsync(new Uri(this[id].BaseUri, $"/raft/get?group={group}&key={Uri.EscapeDataString(key)}"), cts.Token);
            return resp.StatusCode switch
            {
                HttpStatusCode.OK => (true, await resp.Content.ReadAsStringAsync(cts.Token)),
                HttpStatusCode.NotFound => (true, null),
                _ => throw Failure($"s{id}: GET /raft/get g{group} {key}: HTTP {(int)resp.StatusCode}"),
            };
        }
        catch (Exception ex) when (IsTransient(ex))
        {
            return (false, null);
        }
    }

    // ------------------------------------------------------------------ conditions

    /// <summary>
    /// Polls <paramref name="problem"/> (null = satisfied, else what is still wrong) until it is satisfied or the
    /// deadline passes; then fails with the last problem and every server's log tail. Returns the time it took.
    /// </summary>
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

    /// <inheritdoc cref="WaitUntilAsync(Func{Task{string?}}, TimeSpan, string, TimeSpan?)"/>
    public Task<TimeSpan> WaitUntilAsync(Func<Task<bool>> condition, TimeSpan timeout, string what, TimeSpan? poll = null) =>
        WaitUntilAsync(async () => await condition() ? null : "condition false", timeout, what, poll);

    /// <summary>
    /// Every group has exactly one leader among <paramref name="ids"/>, and every one of them reports that leader at
    /// the leader's term. Null leaders when not (and why).
    /// </summary>
    public async Task<(Dictionary<ulong, (ulong Leader, ulong Term)>? Leaders, string? Problem)> CheckLeadershipAsync(IReadOnlyCollection<ulong> ids)
    {
        var all = await StatusAllAsync(ids);
        var silent = all.Where(kv => kv.Value is null).Select(kv => $"s{kv.Key}").ToList();
        if (silent.Count > 0)
        {
            return (null, $"{string.Join(", ", silent)} did not answer /raft/status");
        }

        var byServer = all.ToDictionary(kv => kv.Key, kv => kv.Value!.ToDictionary(r => r.Group));
        var leaders = new Dictionary<ulong, (ulong, ulong)>();
        var problems = new List<string>();
        foreach (var g in GroupIds)
        {
            var views = byServer.Select(kv => (Server: kv.Key, Replica: kv.Value.GetValueOrDefault(g))).ToList();
            var absent = views.Where(v => v.Replica is null).Select(v => $"s{v.Server}").ToList();
            if (absent.Count > 0)
            {
                problems.Add($"g{g} missing on {string.Join(", ", absent)}");
                continue;
            }

            var claiming = views.Where(v => v.Replica!.IsLeader).ToList();
            if (claiming.Count != 1)
            {
                problems.Add($"g{g}: {claiming.Count} leaders ({Describe(views)})");
                continue;
            }

            var (leader, state) = (claiming[0].Server, claiming[0].Replica!);
            if (views.Any(v => v.Replica!.Leader != leader || v.Replica.Term != state.Term))
            {
                problems.Add($"g{g}: not agreed ({Describe(views)})");
                continue;
            }

            leaders[g] = (leader, state.Term);
        }

        return problems.Count == 0 ? (leaders, null) : (null, $"{problems.Count} groups: {string.Join("; ", problems.Take(6))}");

        static string Describe(IEnumerable<(ulong Server, ReplicaState? Replica)> views) =>
            string.Join(", ", views.Select(v => $"s{v.Server}:{v.Replica!.Role}/t{v.Replica.Term}/l{v.Replica.Leader}"));
    }

    /// <summary>Waits until <see cref="CheckLeadershipAsync"/> holds; returns the leaders and the time it took.</summary>
    public async Task<(Dictionary<ulong, (ulong Leader, ulong Term)> Leaders, TimeSpan Elapsed)> WaitForLeadersAsync(IReadOnlyCollection<ulong> ids, TimeSpan timeout)
    {
        Dictionary<ulong, (ulong, ulong)>? leaders = null;
        var elapsed = await WaitUntilAsync(
            async () =>
            {
                (leaders, var problem) = await CheckLeadershipAsync(ids);
                return problem;
            },
            timeout,
            $"one agreed leader per group on {string.Join(",", ids.Select(i => $"s{i}"))}");
        return (leaders!, elapsed);
    }

    /// <summary>Waits until every server in <paramref name="ids"/> has applied at least <paramref name="minApplied"/>[group].</summary>
    public Task<TimeSpan> WaitAppliedAsync(IReadOnlyCollection<ulong> ids, IReadOnlyDictionary<ulong, ulong> minApplied, TimeSpan timeout, string what) =>
        WaitUntilAsync(
            async () =>
            {
                var all = await StatusAllAsync(ids);
                var behind = new List<string>();
                foreach (var (id, status) in all)
                {
                    if (status is null)
                    {
                        behind.Add($"s{id} did not answer");
                        continue;
                    }

                    var applied = status.ToDictionary(r => r.Group, r => r.Applied);
                    behind.AddRange(minApplied
                        .Where(m => applied.GetValueOrDefault(m.Key) < m.Value)
                        .Select(m => $"s{id} g{m.Key} applied {applied.GetValueOrDefault(m.Key)} < {m.Value}"));
                }

                return behind.Count == 0 ? null : $"{behind.Count} behind: {string.Join("; ", behind.Take(6))}";
            },
            timeout,
            what);

    /// <summary>The highest acknowledged index per group.</summary>
    public static Dictionary<ulong, ulong> MaxIndexPerGroup(IEnumerable<PutAck> acks) =>
        acks.GroupBy(a => a.Group).ToDictionary(g => g.Key, g => g.Max(a => a.Index));

    /// <summary>Reads every acknowledged key on every server in <paramref name="ids"/>; returns what is wrong.</summary>
    public async Task<List<string>> CheckKeysAsync(IReadOnlyCollection<ulong> ids, IEnumerable<PutAck> acks)
    {
        var wrong = new ConcurrentBag<string>();
        var reads = ids.SelectMany(id => acks.Select(a => (Id: id, Ack: a))).ToList();
        await Parallel.ForEachAsync(reads, new ParallelOptions { MaxDegreeOfParallelism = 12 }, async (r, _) =>
        {
            var answered = false;
            string? value = null;
            for (var attempt = 0; attempt < 5 && !answered; attempt++)
            {
                (answered, value) = await TryGetAsync(r.Id, r.Ack.Group, r.Ack.Key);
                if (!answered)
                {
                    await Task.Delay(100, CancellationToken.None);
                }
            }

            if (!answered)
            {
                wrong.Add($"s{r.Id} did not answer GET g{r.Ack.Group} {r.Ack.Key}");
            }
            else if (value != r.Ack.Value)
            {
                wrong.Add($"s{r.Id} g{r.Ack.Group} {r.Ack.Key} = {(value is null ? "<missing>" : $"'{value}'")}, acknowledged '{r.Ack.Value}' at index {r.Ack.Index} term {r.Ack.Term} by s{r.Ack.Server}");
            }
        });
        return [.. wrong.OrderBy(w => w, StringComparer.Ordinal)];
    }

    // ------------------------------------------------------------------ failures and logs

    /// <summary>An assertion failure whose message ends with every server's log tail.</summary>
    public XunitException Failure(string message, Exception? inner = null) =>
        new($"{message}\n{LogTails()}", inner);

    /// <summary>Fails (with the log tails) unless <paramref name="condition"/>.</summary>
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
            var state = s.Process is null ? "never started" : s.IsRunning ? $"running, pid {s.Process.Id}" : $"exited ({ExitCodeOf(s.Process)})";
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
                TryKill(p);
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

                AllProcesses.TryRemove(p.Id, out _);
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

    /// <summary>Starts `dotnet canopy.dll args` with stdout/stderr captured; the caller owns the process.</summary>
    public static Process StartCanopy(IEnumerable<string> args, Action<string> onLine, string workingDirectory)
    {
        var psi = new ProcessStartInfo(DotnetHost())
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = false,
            WorkingDirectory = workingDirectory,
        };
        psi.ArgumentList.Add(CanopyDll);
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        psi.Environment.Remove("CANOPY_DEBUG"); // the tests check the default (no stack trace) error output

        var p = new Process { StartInfo = psi, EnableRaisingEvents = true };
        p.OutputDataReceived += (_, e) =>
        {
            if (e.Data is { } line)
            {
                onLine(line);
            }
        };
        p.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is { } line)
            {
                onLine($"[stderr] {line}");
            }
        };
        p.Start();
        AllProcesses[p.Id] = p;
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        return p;
    }

    public static void Forget(Process p) => AllProcesses.TryRemove(p.Id, out _);

    public static void TryKill(Process p)
    {
        try
        {
            if (!p.HasExited)
            {
                p.Kill(entireProcessTree: true);
            }
        }
        catch (Exception ex) when (ex is InvalidOperationException or System.ComponentModel.Win32Exception or NotSupportedException)
        {
            // already gone
        }
    }

    /// <summary>Loopback ports that were free a moment ago (all bound at once, so distinct).</summary>
    public static int[] FreePorts(int count)
    {
        var listeners = Enumerable.Range(0, count).Select(_ => new TcpListener(IPAddress.Loopback, 0)).ToList();
        try
        {
            foreach (var l in listeners)
            {
                l.Start();
            }

            return [.. listeners.Select(l => ((IPEndPoint)l.LocalEndpoint).Port)];
        }
        finally
        {
            foreach (var l in listeners)
            {
                l.Stop();
                l.Dispose();
            }
        }
    }

    public IReadOnlyList<string> RaftNodeArgs(RaftServer s) =>
    [
        "raft-node",
        "--id", s.Id.ToString(CultureInfo.InvariantCulture),
        "--store", s.StoreDirectory,
        "--listen-addr", s.ListenAddress,
        "--http-addr", s.HttpAddress,
        "--members", Members,
        "--groups", Groups.ToString(CultureInfo.InvariantCulture),
        "--tick", "50ms",
        "--election-ticks", ElectionTicks.ToString(CultureInfo.InvariantCulture),
    ];

    private void Launch(RaftServer s)
    {
        s.Starts++;
        s.Append($"==== [test] start #{s.Starts} at {DateTime.UtcNow:HH:mm:ss.fff}: canopy {string.Join(' ', RaftNodeArgs(s))} ====");
        s.Process = StartCanopy(RaftNodeArgs(s), s.Append, Root);
    }

    private async Task WaitReachableAsync(IReadOnlyCollection<ulong> ids, TimeSpan timeout) =>
        await WaitUntilAsync(
            async () =>
            {
                var exited = ids.Where(id => !this[id].IsRunning).ToList();
                if (exited.Count > 0)
                {
                    // Not worth waiting for: a process that exited will not answer.
                    throw Failure($"server(s) {string.Join(", ", exited.Select(id => $"s{id} ({ExitCodeOf(this[id].Process)})"))} exited during start-up");
                }

                var all = await StatusAllAsync(ids);
                var silent = all.Where(kv => kv.Value is null).Select(kv => $"s{kv.Key}").ToList();
                return silent.Count == 0 ? null : $"{string.Join(", ", silent)} not answering /raft/status";
            },
            timeout,
            $"{string.Join(", ", ids.Select(id => $"s{id}"))} to answer /raft/status",
            TimeSpan.FromMilliseconds(100));

    private ulong NextRunning(ulong after)
    {
        var ids = Ids;
        var i = ids.ToList().IndexOf(after);
        for (var k = 1; k <= ids.Count; k++)
        {
            var candidate = ids[(i + k) % ids.Count];
            if (this[candidate].IsRunning)
            {
                return candidate;
            }
        }

        return after;
    }

    private static string ExitCodeOf(Process? p)
    {
        try
        {
            return p is { HasExited: true } ? $"exit code {p.ExitCode}" : "running";
        }
        catch (InvalidOperationException)
        {
            return "unknown";
        }
    }

    private static bool IsTransient(Exception ex) =>
        ex is HttpRequestException or OperationCanceledException or IOException or SocketException;

    private static string DotnetHost()
    {
        // The tests run under the dotnet host (testhost.dll); use the same one for the servers.
        var self = Environment.ProcessPath;
        return self is not null && Path.GetFileNameWithoutExtension(self).Equals("dotnet", StringComparison.OrdinalIgnoreCase) ? self : "dotnet";
    }
}
