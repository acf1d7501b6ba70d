namespace Canopy.Host;

using System.Net;
using System.Text;
using System.Text.Json;
using Canopy.Replication.MultiRaft;
using Canopy.Replication.Raft;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

/// <summary>Configuration of a raft-level server process (`canopy raft-node`).</summary>
public sealed record RaftNodeServerOptions
{
    public required ulong ServerId { get; init; }

    public required IPEndPoint ListenEndPoint { get; init; }

    public required IPEndPoint HttpEndPoint { get; init; }

    /// <summary>Every server of the cluster, this one included, by id.</summary>
    public required IReadOnlyDictionary<ulong, IPEndPoint> Members { get; init; }

    public required string StoreDirectory { get; init; }

    /// <summary>Groups 1..Groups, each replicated on every member (static bootstrap of a new store).</summary>
    public int Groups { get; init; } = 32;

    public TimeSpan TickInterval { get; init; } = TimeSpan.FromMilliseconds(50);

    public SchedulerOptions Scheduler { get; init; } = new();
}

/// <summary>
/// A raft-level server: a <see cref="RaftHost"/> with one <see cref="KvStateMachine"/> per group, plus a small HTTP
/// admin API used by real-process tests and benchmarks:
/// <code>
///   GET  /raft/status                          every replica: group, role, term, leader, commit, applied, last index
///   POST /raft/propose?group=G&amp;key=K  (body)   put K=body in G through Raft; 200 when applied here,
///                                              421 + leader hint if not the leader, 503 overloaded, 504 ambiguous/timeout
///   GET  /raft/get?group=G&amp;key=K              the value applied on this replica (a local, non-linearizable read)
///   POST /raft/transfer?group=G&amp;to=N          start a leadership transfer
/// </code>
/// (The range layer and its client protocol replace this for the real cluster; this is the Raft layer alone.)
/// </summary>
public sealed class RaftNodeServer : IAsyncDisposable
{
    private readonly RaftHost _host;
    private readonly KvStateMachineFactory _machines;
    private readonly WebApplication _web;
    private readonly CancellationTokenSource _stop = new();
    private Task _balancer = Task.CompletedTask;

    private RaftNodeServer(RaftHost host, KvStateMachineFactory machines, WebApplication web)
    {
        _host = host;
        _machines = machines;
        _web = web;
    }

    public RaftHost Host => _host;

    public static async Task<RaftNodeServer> StartAsync(RaftNodeServerOptions options, Action<string> log)
    {
        var machines = new KvStateMachineFactory();
        var host = RaftHost.Start(
            new RaftHostOptions
            {
                ServerId = options.ServerId,
                ListenEndPoint = options.ListenEndPoint,
                Peers = options.Members.Where(m => m.Key != options.ServerId).ToDictionary(m => m.Key, m => (EndPoint)m.Value),
                StoreDirectory = options.StoreDirectory,
                TickInterval = options.TickInterval,
                Scheduler = options.Scheduler,
                Log = log,
            },
            machines);
        try
        {
            var conf = new ConfState(options.Members.Keys, []);
            var created = 0;
            for (var g = 1UL; g <= (ulong)options.Groups; g++)
            {
                if (await host.BootstrapIfMissingAsync(g, conf))
                {
                    created++;
                }
            }

            log(created > 0 ? $"bootstrapped {created} groups on a new store" : "restarted from the store");
            var ids = options.Members.Keys.Order().ToList();
            if (created > 0)
            {
                // Spread leadership: each server campaigns at once for its share of the groups.
                await host.InvokeAsync(s =>
                {
                    for (var g = 1UL; g <= (ulong)options.Groups; g++)
                    {
                        if (Preferred(g, ids) == options.ServerId)
                        {
                            s.Campaign(g);
                        }
                    }

                    return true;
                });
            }

            var builder = WebApplication.CreateSlimBuilder();
            builder.Logging.ClearProviders();
            builder.WebHost.ConfigureKestrel(k => k.Listen(options.HttpEndPoint));
            var web = builder.Build();
            var server = new RaftNodeServer(host, machines, web);
            server.MapRoutes();
            await web.StartAsync();
            server._balancer = Task.Run(() => server.BalanceLeadershipAsync(ids));
            return server;
        }
        catch
        {
            await host.DisposeAsync();
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        await _balancer;
        await _web.StopAsync();
        await _web.DisposeAsync();
        await _host.DisposeAsync();
    }

    private void MapRoutes()
    {
        _web.MapGet("/raft/status", async (HttpContext ctx) =>
        {
            var status = await _host.StatusAsync();
            ctx.Response.ContentType = "application/json";
            await ctx.Response.WriteAsync(JsonSerializer.Serialize(status.Select(s => new
            {
                group = s.Group,
                role = s.Role.ToString(),
                term = s.Term,
                leader = s.Leader,
                commit = s.Commit,
                applied = s.Applied,
                last_index = s.LastIndex,
                quiesced = s.Quiesced,
                voters = s.Voters,
                learners = s.Learners,
            })));
        });

        _web.MapPost("/raft/propose", async (HttpContext ctx) =>
        {
            if (!TryGroup(ctx, out var group) || ctx.Request.Query["key"].ToString() is not { Length: > 0 } key)
            {
                ctx.Response.StatusCode = 400;
                await ctx.Response.WriteAsync("need group and key");
                return;
            }

            using var body = new MemoryStream();
            await ctx.Request.Body.CopyToAsync(body);
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            ProposeOutcome outcome;
            try
            {
                outcome = await _host.ProposeAsync(group, KvStateMachine.EncodePut(Encoding.UTF8.GetBytes(key), body.ToArray()), timeout.Token);
            }
            catch (OperationCanceledException)
            {
                ctx.Response.StatusCode = 504;
                await ctx.Response.WriteAsync("ambiguous: timed out waiting for the commit");
                return;
            }

            ctx.Response.StatusCode = outcome.Status switch
            {
                ProposeOutcomeStatus.Committed => 200,
                ProposeOutcomeStatus.NotLeader or ProposeOutcomeStatus.TransferInProgress => 421,
                ProposeOutcomeStatus.Overloaded or ProposeOutcomeStatus.Dropped => 503,
                _ => 504,
            };
            await ctx.Response.WriteAsync(JsonSerializer.Serialize(new { status = outcome.Status.ToString(), index = outcome.Index, term = outcome.Term, leader = outcome.LeaderHint }));
        });

        _web.MapGet("/raft/get", async (HttpContext ctx) =>
        {
            if (!TryGroup(ctx, out var group) || ctx.Request.Query["key"].ToString() is not { Length: > 0 } key)
            {
                ctx.Response.StatusCode = 400;
                return;
            }

            var value = _machines.Get(group)?.Get(Encoding.UTF8.GetBytes(key));
            if (value is null)
            {
                ctx.Response.StatusCode = 404;
                return;
            }

            await ctx.Response.Body.WriteAsync(value);
        });

        _web.MapPost("/raft/transfer", async (HttpContext ctx) =>
        {
            if (!TryGroup(ctx, out var group) || !ulong.TryParse(ctx.Request.Query["to"], out var to))
            {
                ctx.Response.StatusCode = 400;
                return;
            }

            var ok = await _host.InvokeAsync(s => s.TransferLeadership(group, to));
            ctx.Response.StatusCode = ok ? 200 : 409;
        });
    }

    /// <summary>The server that should lead group <paramref name="group"/>: groups are dealt round-robin.</summary>
    private static ulong Preferred(ulong group, List<ulong> ids) => ids[(int)((group - 1) % (ulong)ids.Count)];

    /// <summary>
    /// Every second, hands each group this server leads but should not back to its preferred server, once that
    /// server is connected and holds the whole log (a leadership transfer, no election timeout). Keeps leadership
    /// spread after servers start at different times or come back after a crash.
    /// </summary>
    private async Task BalanceLeadershipAsync(List<ulong> ids)
    {
        while (!_stop.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(TimeSpan.FromSeconds(1), _stop.Token);
                await _host.InvokeAsync(s =>
                {
                    foreach (var g in s.Groups.ToArray())
                    {
                        var preferred = Preferred(g, ids);
                        if (s.Node(g) is { Role: RaftRole.Leader } n && preferred != n.Id && _host.IsConnected(preferred)
                            && n.ProgressOf(preferred) is { } p && p.Match == n.LastIndex)
                        {
                            s.TransferLeadership(g, preferred);
                        }
                    }

                    return true;
                });
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (InvalidOperationException)
            {
                return; // the host is stopping
            }
        }
    }

    private static bool TryGroup(HttpContext ctx, out ulong group) => ulong.TryParse(ctx.Request.Query["group"], out group) && group > 0;
}
