// GodotCluster: a cluster of real `canopy start` processes on loopback for the Godot engine tests, shared by the
// tests of a collection (each test uses its own tree name, i.e. its own key namespace).
// - Each server: `dotnet <test output>/canopy.dll start --store .. --listen-addr .. --http-addr .. --join a,b,c`, two
//   free loopback ports, its output kept in a tail for failure messages. Up = GET /health answers.
// - `canopy init` is CanopyClient.InitAsync; the cluster is ready once a put succeeds in each of the six user ranges.
// - Kill is SIGKILL (the reconnect test); DisposeAsync kills whatever still runs.
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Canopy.Client;
using Xunit.Sdk;

namespace Canopy.Godot.Tests;

/// <summary>One server process of a <see cref="GodotCluster"/>.</summary>
public sealed class GodotServer
{
    private readonly Queue<string> _tail = new();
    private readonly Lock _lock = new();

    internal GodotServer(int index, int listenPort, int httpPort, string store)
    {
        Index = index;
        ListenAddress = $"127.0.0.1:{listenPort}";
        HttpAddress = $"127.0.0.1:{httpPort}";
        Store = store;
    }

    public int Index { get; }

    public string ListenAddress { get; }

    public string HttpAddress { get; }

    /// <summary>The WebSocket gateway of this server.</summary>
    public string WebSocketUrl => $"ws://{HttpAddress}/ws";

    public string Store { get; }

    public Process? Process { get; internal set; }

    public bool IsRunning
    {
        get
        {
            try
            {
                return Process is { HasExited: false };
            }
            catch (InvalidOperationException)
            {
                return false;
            }
        }
    }

    internal void Keep(string line)
    {
        lock (_lock)
        {
            _tail.Enqueue(line);
            while (_tail.Count > 30)
            {
                _tail.Dequeue();
            }
        }
    }

    public string Tail()
    {
        lock (_lock)
        {
            return string.Join('\n', _tail);
        }
    }
}

/// <summary>A 3-server cluster of real processes; see the file header.</summary>
public sealed class GodotCluster : IAsyncLifetime
{
    private readonly HttpClient _http = new(new SocketsHttpHandler { ConnectTimeout = TimeSpan.FromSeconds(2), UseProxy = false }) { Timeout = TimeSpan.FromSeconds(3) };
    private readonly List<GodotServer> _servers = [];
    private string _root = "";

    public IReadOnlyList<GodotServer> Servers => _servers;

    public static string CanopyDll => Path.Combine(AppContext.BaseDirectory, "canopy.dll");

    public async Task InitializeAsync()
    {
        // No cluster when the engine cannot run: the tests skip before using it.
        if (GodotHarness.SkipReason is not null)
        {
            return;
        }

        if (!File.Exists(CanopyDll))
        {
            throw new XunitException($"{CanopyDll} is missing: the test project must reference apps/canopy/canopy.csproj");
        }

        _root = Path.Combine(Path.GetTempPath(), $"canopy-godot-{Guid.NewGuid().ToString("N")[..10]}");
        Directory.CreateDirectory(_root);
        var ports = FreePorts(6);
        for (var i = 0; i < 3; i++)
        {
            _servers.Add(new GodotServer(i + 1, ports[2 * i], ports[(2 * i) + 1], Path.Combine(_root, $"s{i + 1}")));
        }

        foreach (var s in _servers)
        {
            Launch(s);
        }

        await WaitUntilAsync(async () =>
        {
            foreach (var s in _servers)
            {
                if (!s.IsRunning)
                {
                    throw Failure($"s{s.Index} exited during start-up");
                }

                if (!await HealthAsync(s))
                {
                    return $"s{s.Index} does not answer GET /health";
                }
            }

            return null;
        }, TimeSpan.FromSeconds(60), "the servers to start");

        await using var client = await CanopyClient.ConnectAsync([.. _servers.Select(s => s.ListenAddress)]);
        await client.InitAsync();
        // Ready when every user range (split at e, i, n, r, v) takes a write.
        var pending = new List<string> { "a", "f", "j", "o", "s", "w" };
        await WaitUntilAsync(async () =>
        {
            foreach (var prefix in pending.ToList())
            {
                try
                {
                    using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(3));
                    await client.PutAsync(Encoding.UTF8.GetBytes($"{prefix}/godot-tests-ready"), [1], cts.Token);
                    pending.Remove(prefix);
                }
                catch (Exception ex) when (ex is not XunitException)
                {
                    return $"the range of '{prefix}' refuses writes: {ex.GetType().Name}: {ex.Message}";
                }
            }

            return null;
        }, TimeSpan.FromSeconds(60), "every range to take writes");
    }

    public async Task DisposeAsync()
    {
        foreach (var s in _servers)
        {
            Kill(s);
        }

        _http.Dispose();
        await Task.CompletedTask;
        if (_root.Length > 0 && Environment.GetEnvironmentVariable("CANOPY_KEEP_TEST_DIRS") is not "1")
        {
            try
            {
                Directory.Delete(_root, recursive: true);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                // left behind in /tmp
            }
        }
    }

    /// <summary>SIGKILL; returns when the process is gone.</summary>
    public void Kill(GodotServer s)
    {
        if (s.Process is not { } p)
        {
            return;
        }

        try
        {
            if (!p.HasExited)
            {
                p.Kill(entireProcessTree: true);
            }

            p.WaitForExit(20_000);
        }
        catch (InvalidOperationException)
        {
            // already gone
        }

        s.Keep($"==== [test] SIGKILL at {DateTime.UtcNow:HH:mm:ss.fff} ====");
    }

    /// <summary>Starts a killed server again on its store and ports; returns when it answers.</summary>
    public async Task RestartAsync(GodotServer s)
    {
        s.Process?.Dispose();
        Launch(s);
        await WaitUntilAsync(async () => await HealthAsync(s) ? null : $"s{s.Index} does not answer GET /health", TimeSpan.FromSeconds(60), $"s{s.Index} to restart");
    }

    public string LogTails() =>
        string.Join('\n', _servers.Select(s => $"---- s{s.Index} ({(s.IsRunning ? "running" : "stopped")}) ----\n{s.Tail()}"));

    public XunitException Failure(string message) => new($"{message}\n{LogTails()}");

    private void Launch(GodotServer s)
    {
        var psi = new ProcessStartInfo(DotnetHost())
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = _root,
        };
        foreach (var a in new[] { CanopyDll, "start", "--store", s.Store, "--listen-addr", s.ListenAddress, "--http-addr", s.HttpAddress, "--join", string.Join(',', _servers.Select(x => x.ListenAddress)) })
        {
            psi.ArgumentList.Add(a);
        }

        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        var p = new Process { StartInfo = psi };
        p.OutputDataReceived += (_, e) =>
        {
            if (e.Data is { } line)
            {
                s.Keep(line);
            }
        };
        p.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is { } line)
            {
                s.Keep("[stderr] " + line);
            }
        };
        p.Start();
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        s.Process = p;
    }

    private async Task<bool> HealthAsync(GodotServer s)
    {
        try
        {
            using var resp = await _http.GetAsync(new Uri($"http://{s.HttpAddress}/health"));
            return resp.StatusCode == HttpStatusCode.OK;
        }
        catch (Exception ex) when (ex is HttpRequestException or OperationCanceledException or IOException)
        {
            return false;
        }
    }

    private async Task WaitUntilAsync(Func<Task<string?>> problem, TimeSpan timeout, string what)
    {
        var start = Stopwatch.GetTimestamp();
        while (true)
        {
            var p = await problem();
            if (p is null)
            {
                return;
            }

            if (Stopwatch.GetElapsedTime(start) > timeout)
            {
                throw Failure($"timed out after {timeout.TotalSeconds:0} s waiting for {what}; still: {p}");
            }

            await Task.Delay(100);
        }
    }

    private static string DotnetHost()
    {
        var self = Environment.ProcessPath;
        return self is not null && Path.GetFileNameWithoutExtension(self).Equals("dotnet", StringComparison.OrdinalIgnoreCase) ? self : "dotnet";
    }

    private static int[] FreePorts(int count)
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
}

[CollectionDefinition("godot-cluster")]
public sealed class GodotClusterCollection : ICollectionFixture<GodotCluster>;
