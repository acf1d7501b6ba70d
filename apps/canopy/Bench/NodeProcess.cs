using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Text.Json;

namespace Canopy.Cli.Bench;

/// <summary>
/// One `canopy raft-node` child process (`dotnet canopy.dll raft-node ...`, the canopy.dll next to this CLI). Keeps
/// the last lines of its output for error messages. <see cref="Kill"/> sends SIGKILL.
/// </summary>
internal sealed class NodeProcess : IDisposable
{
    private const int TailLines = 40;

    private readonly ProcessStartInfo _start;
    private readonly Queue<string> _tail = new();
    private Process? _process;

    public NodeProcess(ulong id, int httpPort, IEnumerable<string> arguments)
    {
        Id = id;
        HttpPort = httpPort;
        _start = new ProcessStartInfo(DotnetHost())
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = false,
            UseShellExecute = false,
        };
        _start.ArgumentList.Add(CanopyDll());
        foreach (var a in arguments)
        {
            _start.ArgumentList.Add(a);
        }
    }

    public ulong Id { get; }

    public int HttpPort { get; }

    public bool IsRunning => _process is { HasExited: false };

    public Uri Uri(string pathAndQuery) => new($"http://127.0.0.1:{HttpPort}{pathAndQuery}");

    /// <summary>The canopy.dll of the running CLI (a raft-node is the same program).</summary>
    public static string CanopyDll()
    {
        var dll = Path.Combine(AppContext.BaseDirectory, "canopy.dll");
        return File.Exists(dll) ? dll : throw new FileNotFoundException($"cannot find {dll} to start raft-node processes");
    }

    public void Start()
    {
        if (IsRunning)
        {
            throw new InvalidOperationException($"raft-node {Id} is already running");
        }

        _process?.Dispose();
        var p = new Process { StartInfo = _start };
        p.OutputDataReceived += (_, e) => Keep(e.Data);
        p.ErrorDataReceived += (_, e) => Keep(e.Data);
        p.Start();
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        _process = p;
    }

    /// <summary>SIGKILL (Process.Kill on Unix), then reaps the process.</summary>
    public void Kill()
    {
        if (_process is not { } p)
        {
            return;
        }

        try
        {
            if (!p.HasExited)
            {
                p.Kill();
            }

            p.WaitForExit(10_000);
        }
        catch (InvalidOperationException)
        {
            // already gone
        }
    }

    /// <summary>The last lines the process printed (for error messages).</summary>
    public string Tail()
    {
        lock (_tail)
        {
            return string.Join(Environment.NewLine, _tail);
        }
    }

    public void Dispose()
    {
        Kill();
        _process?.Dispose();
        _process = null;
    }

    private static string DotnetHost()
    {
        var self = Environment.ProcessPath;
        return self is not null && Path.GetFileNameWithoutExtension(self).Equals("dotnet", StringComparison.OrdinalIgnoreCase) ? self : "dotnet";
    }

    private void Keep(string? line)
    {
        if (line is null)
        {
            return;
        }

        lock (_tail)
        {
            _tail.Enqueue(line);
            while (_tail.Count > TailLines)
            {
                _tail.Dequeue();
            }
        }
    }
}

/// <summary>One replica as reported by GET /raft/status.</summary>
internal sealed record NodeReplica(ulong Group, string Role, ulong Term, ulong Leader, ulong Commit, ulong Applied, bool Quiesced)
{
    public bool IsLeader => Role == "Leader";
}

internal enum PutStatus
{
    Ok,

    /// <summary>421: not the leader (with a hint, or 0).</summary>
    NotLeader,

    /// <summary>503 / 504 / other: try again.</summary>
    Busy,

    /// <summary>No HTTP answer (connection refused or reset, timeout).</summary>
    Unreachable,
}

/// <summary>The HTTP admin API of raft-node processes.</summary>
internal sealed class NodeApi : IDisposable
{
    private readonly HttpClient _http = new(new SocketsHttpHandler
    {
        ConnectTimeout = TimeSpan.FromSeconds(1),
        PooledConnectionIdleTimeout = TimeSpan.FromSeconds(30),
        UseProxy = false,
    })
    {
        Timeout = TimeSpan.FromSeconds(6),
    };

    /// <summary>Every replica of the node, or null if it does not answer.</summary>
    public async Task<NodeReplica[]?> StatusAsync(NodeProcess node, CancellationToken ct)
    {
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
            timeout.CancelAfter(TimeSpan.FromSeconds(2));
            using var resp = await _http.GetAsync(node.Uri("/raft/status"), timeout.Token);
            if (resp.StatusCode != HttpStatusCode.OK)
            {
                return null;
            }

            await using var body = await resp.Content.ReadAsStreamAsync(timeout.Token);
            using var doc = await JsonDocument.ParseAsync(body, cancellationToken: timeout.Token);
            return [.. doc.RootElement.EnumerateArray().Select(e => new NodeReplica(
                e.GetProperty("group").GetUInt64(),
                e.GetProperty("role").GetString() ?? "",
                e.GetProperty("term").GetUInt64(),
                e.GetProperty("leader").GetUInt64(),
                e.GetProperty("commit").GetUInt64(),
                e.GetProperty("applied").GetUInt64(),
                e.GetProperty("quiesced").GetBoolean()))];
        }
        catch (Exception e) when ((e is HttpRequestException or OperationCanceledException or JsonException or IOException) && !ct.IsCancellationRequested)
        {
            return null;
        }
    }

    /// <summary>POST /raft/propose: a put of <paramref name="value"/> under <paramref name="key"/> in <paramref name="group"/>.</summary>
    public async Task<(PutStatus Status, ulong LeaderHint)> PutAsync(NodeProcess node, ulong group, string key, byte[] value, CancellationToken ct)
    {
        try
        {
            using var content = new ByteArrayContent(value);
            content.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
            using var resp = await _http.PostAsync(node.Uri($"/raft/propose?group={group}&key={key}"), content, ct);
            switch (resp.StatusCode)
            {
                case HttpStatusCode.OK:
                    return (PutStatus.Ok, node.Id);
                case HttpStatusCode.MisdirectedRequest:
                    var text = await resp.Content.ReadAsStringAsync(ct);
                    ulong hint = 0;
                    try
                    {
                        using var doc = JsonDocument.Parse(text);
                        hint = doc.RootElement.TryGetProperty("leader", out var l) ? l.GetUInt64() : 0;
                    }
                    catch (JsonException)
                    {
                    }

                    return (PutStatus.NotLeader, hint);
                default:
                    return (PutStatus.Busy, 0);
            }
        }
        catch (Exception e) when ((e is HttpRequestException or OperationCanceledException or IOException) && !ct.IsCancellationRequested)
        {
            return (PutStatus.Unreachable, 0);
        }
    }

    public void Dispose() => _http.Dispose();
}
