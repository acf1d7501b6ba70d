namespace Canopy.Client;

using System.Collections.Concurrent;
using Canopy.Rpc;

/// <summary>
/// One <see cref="RpcClient"/> per server address, opened on first use and reopened after a failure (one connect at a
/// time per server; concurrent callers wait for it). Tracks servers that failed recently ("suspect") so that routing
/// avoids them for <see cref="CanopyClientOptions.SuspectDuration"/>.
/// </summary>
internal sealed class ServerPool : IAsyncDisposable
{
    private readonly ConcurrentDictionary<string, Server> _servers = new(StringComparer.Ordinal);
    private readonly object _knownGate = new();
    private readonly TimeSpan _suspectDuration;
    private string[] _known;
    private int _roundRobin;
    private volatile bool _disposed;

    public ServerPool(IEnumerable<string> seeds, TimeSpan suspectDuration)
    {
        _known = seeds.Distinct(StringComparer.Ordinal).ToArray();
        _suspectDuration = suspectDuration;
    }

    /// <summary>Every address that "any server" may choose from: the seeds, then servers learned from the cluster.</summary>
    public IReadOnlyList<string> Known => Volatile.Read(ref _known);

    public void AddKnown(string address)
    {
        if (string.IsNullOrEmpty(address) || Array.IndexOf(Volatile.Read(ref _known), address) >= 0)
        {
            return;
        }

        lock (_knownGate)
        {
            var known = _known;
            if (Array.IndexOf(known, address) < 0)
            {
                Volatile.Write(ref _known, [.. known, address]);
            }
        }
    }

    public bool IsSuspect(string address) =>
        _servers.TryGetValue(address, out var s) && Volatile.Read(ref s.SuspectUntil) > Environment.TickCount64;

    /// <summary>Avoids <paramref name="address"/> for a while. True when it was not suspect already.</summary>
    public bool MarkSuspect(string address)
    {
        var s = GetServer(address);
        var now = Environment.TickCount64;
        var until = now + (long)_suspectDuration.TotalMilliseconds;
        var before = Interlocked.Exchange(ref s.SuspectUntil, until);
        return before <= now;
    }

    /// <summary>
    /// A server for a request that may go anywhere: round robin over the known servers that are not suspect, other
    /// than <paramref name="avoid"/> when possible; if all are suspect, the one whose suspicion ends first.
    /// </summary>
    public string PickAny(string? avoid)
    {
        var known = Volatile.Read(ref _known);
        if (known.Length == 1)
        {
            return known[0];
        }

        var start = (uint)Interlocked.Increment(ref _roundRobin);
        var now = Environment.TickCount64;
        string? fallback = null;
        var fallbackUntil = long.MaxValue;
        for (var i = 0; i < known.Length; i++)
        {
            var a = known[(int)((start + (uint)i) % (uint)known.Length)];
            var until = _servers.TryGetValue(a, out var s) ? Volatile.Read(ref s.SuspectUntil) : 0;
            if (until <= now && !string.Equals(a, avoid, StringComparison.Ordinal))
            {
                return a;
            }

            // Not suspect but to avoid beats any suspect one.
            var rank = until <= now ? long.MinValue : until;
            if (rank < fallbackUntil)
            {
                fallback = a;
                fallbackUntil = rank;
            }
        }

        return fallback ?? known[0];
    }

    /// <summary>The open connection to <paramref name="address"/>, connecting when there is none (or it failed).</summary>
    public async ValueTask<RpcClient> ConnectAsync(string address, TimeSpan timeout, CancellationToken ct)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var s = GetServer(address);
        var client = s.Client;
        if (client is { IsConnected: true })
        {
            return client;
        }

        await s.ConnectLock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            client = s.Client;
            if (client is { IsConnected: true })
            {
                return client;
            }

            if (client is not null)
            {
                s.Client = null;
                await client.DisposeAsync().ConfigureAwait(false);
            }

            client = await RpcClient.ConnectAsync(address, timeout, ct).ConfigureAwait(false);
            if (_disposed)
            {
                await client.DisposeAsync().ConfigureAwait(false);
                throw new ObjectDisposedException(nameof(CanopyClient));
            }

            s.Client = client;
            Volatile.Write(ref s.SuspectUntil, 0);
            return client;
        }
        finally
        {
            s.ConnectLock.Release();
        }
    }

    public async ValueTask DisposeAsync()
    {
        _disposed = true;
        foreach (var s in _servers.Values)
        {
            var client = Interlocked.Exchange(ref s.Client, null);
            if (client is not null)
            {
                await client.DisposeAsync().ConfigureAwait(false);
            }
        }
    }

    private Server GetServer(string address) => _servers.GetOrAdd(address, static a => new Server(a));

    private sealed class Server(string address)
    {
        public readonly SemaphoreSlim ConnectLock = new(1, 1);
        public volatile RpcClient? Client;
        public long SuspectUntil;

        public string Address { get; } = address;
    }
}
