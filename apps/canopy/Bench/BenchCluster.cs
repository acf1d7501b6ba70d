using System.Net;
using System.Net.Sockets;
using Canopy.Host;
using Canopy.Replication.Raft;

namespace Canopy.Cli.Bench;

/// <summary>
/// Three in-process <see cref="RaftHost"/> servers (ids 1..3) on 127.0.0.1 with real TCP between them and a RocksDB
/// store each in a temporary directory (deleted on dispose). Every group is replicated on all three; group g is
/// bootstrapped on every server and then campaigned for on server ((g - 1) mod 3) + 1, so leaders are spread evenly.
/// </summary>
internal sealed class BenchCluster : IAsyncDisposable
{
    public const int Servers = 3;

    private readonly string _root;

    private BenchCluster(string root, RaftHost[] hosts)
    {
        _root = root;
        Hosts = hosts;
    }

    public RaftHost[] Hosts { get; }

    public int Groups { get; private set; }

    public RaftHost Host(ulong id) => Hosts[id - 1];

    /// <summary>Total synced log writes of the three servers so far.</summary>
    public long Syncs => Hosts.Sum(h => h.Counters.Syncs);

    /// <summary>Total milliseconds spent in synced log writes by the three servers so far.</summary>
    public double SyncMs => Hosts.Sum(h =>
    {
        var c = h.Counters;
        return c.Syncs * c.MeanSyncMs;
    });

    /// <summary>Frames sent by the three servers so far.</summary>
    public long FramesSent => Hosts.Sum(h => h.TransportCounters.FramesSent);

    public static async Task<BenchCluster> StartAsync(int groups, CancellationToken ct)
    {
        var root = Path.Combine(Path.GetTempPath(), $"canopy-bench-{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..8]}");
        Directory.CreateDirectory(root);
        var ports = FreePorts(Servers);
        var hosts = new List<RaftHost>();
        try
        {
            for (var i = 1UL; i <= Servers; i++)
            {
                var peers = new Dictionary<ulong, EndPoint>();
                for (var j = 1UL; j <= Servers; j++)
                {
                    if (j != i)
                    {
                        peers[j] = new IPEndPoint(IPAddress.Loopback, ports[j - 1]);
                    }
                }

                hosts.Add(RaftHost.Start(
                    new RaftHostOptions
                    {
                        ServerId = i,
                        ListenEndPoint = new IPEndPoint(IPAddress.Loopback, ports[i - 1]),
                        Peers = peers,
                        StoreDirectory = Path.Combine(root, $"s{i}"),
                    },
                    new KvStateMachineFactory()));
            }
        }
        catch
        {
            foreach (var h in hosts)
            {
                await h.DisposeAsync();
            }

            TryDelete(root);
            throw;
        }

        var cluster = new BenchCluster(root, [.. hosts]);
        try
        {
            await cluster.AddGroupsAsync(groups, ct);
        }
        catch
        {
            await cluster.DisposeAsync();
            throw;
        }

        return cluster;
    }

    /// <summary>Bootstraps groups Groups+1..total on every server and campaigns for each on its designated server.</summary>
    public async Task AddGroupsAsync(int total, CancellationToken ct)
    {
        if (total <= Groups)
        {
            return;
        }

        var first = (ulong)Groups + 1;
        var last = (ulong)total;
        var conf = new ConfState([1, 2, 3], []);

        // One call per server: each bootstrap is one synced write on that server's loop thread.
        await Task.WhenAll(Hosts.Select(h => h.InvokeAsync(s =>
        {
            for (var g = first; g <= last; g++)
            {
                if (s.Node(g) is null)
                {
                    s.Bootstrap(g, conf);
                }
            }

            return 0;
        })));
        ct.ThrowIfCancellationRequested();

        await Task.WhenAll(Hosts.Select((h, i) => h.InvokeAsync(s =>
        {
            for (var g = first; g <= last; g++)
            {
                if ((int)((g - 1) % Servers) == i)
                {
                    s.Campaign(g);
                }
            }

            return 0;
        })));
        Groups = total;
    }

    /// <summary>
    /// Waits until every group has one leader that all three replicas follow (and, if asked, every replica is
    /// quiesced). Returns the number of groups that are not there yet when <paramref name="timeout"/> expires (0: all).
    /// </summary>
    public async Task<int> WaitForLeadersAsync(TimeSpan timeout, bool quiesced, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            var missing = await CountNotSettledAsync(quiesced);
            if (missing == 0 || DateTime.UtcNow >= deadline)
            {
                return missing;
            }

            await Task.Delay(100, ct);
        }
    }

    /// <summary>Groups without an agreed leader (or, if <paramref name="quiesced"/>, with any replica still ticking).</summary>
    public async Task<int> CountNotSettledAsync(bool quiesced)
    {
        var all = await Task.WhenAll(Hosts.Select(h => h.StatusAsync()));
        var byGroup = all.SelectMany(s => s).GroupBy(r => r.Group).ToDictionary(g => g.Key, g => g.ToArray());
        var missing = 0;
        for (var g = 1UL; g <= (ulong)Groups; g++)
        {
            if (!byGroup.TryGetValue(g, out var replicas) || replicas.Length != Servers)
            {
                missing++;
                continue;
            }

            var leader = replicas.FirstOrDefault(r => r.Role == RaftRole.Leader);
            var ok = leader is not null && replicas.All(r => r.Leader == leader.Leader && r.Term == leader.Term);
            if (!ok || (quiesced && !replicas.All(r => r.Quiesced)))
            {
                missing++;
            }
        }

        return missing;
    }

    /// <summary>The server leading <paramref name="group"/> (asks every server; waits while there is none).</summary>
    public async Task<RaftHost> FindLeaderAsync(ulong group, CancellationToken ct)
    {
        while (true)
        {
            foreach (var h in Hosts)
            {
                var status = await h.StatusAsync();
                if (status.FirstOrDefault(r => r.Group == group) is { Role: RaftRole.Leader })
                {
                    return h;
                }
            }

            await Task.Delay(10, ct);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await Task.WhenAll(Hosts.Select(h => h.DisposeAsync().AsTask()));
        TryDelete(_root);
    }

    /// <summary>Distinct free TCP ports on 127.0.0.1 (held together while chosen, then released).</summary>
    public static int[] FreePorts(int count)
    {
        var listeners = new List<TcpListener>();
        try
        {
            for (var i = 0; i < count; i++)
            {
                var l = new TcpListener(IPAddress.Loopback, 0);
                l.Start();
                listeners.Add(l);
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

    public static void TryDelete(string dir)
    {
        for (var attempt = 0; attempt < 3; attempt++)
        {
            try
            {
                if (Directory.Exists(dir))
                {
                    Directory.Delete(dir, recursive: true);
                }

                return;
            }
            catch (IOException)
            {
                Thread.Sleep(100);
            }
            catch (UnauthorizedAccessException)
            {
                return;
            }
        }
    }
}
