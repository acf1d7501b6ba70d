using System.Collections.Concurrent;
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Canopy.Client;
using Canopy.Tree;
using Canopy.Variant;

namespace Canopy.Cli.Commands;

/// <summary>
/// <c>canopy workload tree</c>: the scene tree's game traffic, checked. Two owner sessions (each on its own client,
/// entering the cluster at a different --host) own N entities placed in regions and write each one's <c>seq</c> (an
/// increasing integer) and <c>x</c> at HZ, batching all their entities into one transaction per tick; they hand
/// entities to each other (owner and final value in one transaction) and move entities between regions. Checking
/// subscribers, one per --host, follow the entities' subtree (every seq of every entity, in order) and every region in
/// one subscription (each entity in exactly one region after every batch). Exits 1 on any gap (an acknowledged seq
/// skipped), reordering, duplicate, phantom (a seq whose transaction aborted), lost update (acknowledged, never seen
/// by the end), or entity seen in two regions or none; prints the counts and the latency from commit to a
/// subscriber's batch.
/// </summary>
internal static class TreeWorkload
{
    public static Command Build()
    {
        var host = ClusterCli.HostOption();
        var entities = Options.Int("--entities", "Entities (nodes) the owners move.", 200, 2, 100_000);
        var rate = Options.Int("--rate", "Updates per second of each entity.", 20, 1, 1000);
        var duration = Options.Duration("--duration", "How long the owners write.", TimeSpan.FromSeconds(20));
        var regions = Options.Int("--regions", "Regions the entities are placed in.", 4, 1, 64);
        var handoffs = Options.Int("--handoffs", "Handoffs per second (each owner hands one entity to the other).", 2, 0, 1000);
        var moves = Options.Int("--moves", "Region moves per second (each owner moves one of its entities).", 2, 0, 1000);
        var cmd = new Command("tree", "Owner sessions move entities at a rate with handoffs and region moves; checking subscribers on every --host verify order, gaps, duplicates, lost updates and moves.")
        {
            host, entities, rate, duration, regions, handoffs, moves,
        };
        cmd.SetAction(async (parseResult, ct) =>
        {
            var addresses = (parseResult.GetValue(host) ?? string.Empty).Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            if (addresses.Length == 0)
            {
                throw CliException.Usage("--host needs at least one HOST:PORT");
            }

            var settings = new Settings(parseResult.GetValue(entities), parseResult.GetValue(rate), parseResult.GetValue(duration) ?? TimeSpan.FromSeconds(20),
                parseResult.GetValue(regions), parseResult.GetValue(handoffs), parseResult.GetValue(moves));
            return await new Run(addresses, settings, parseResult.InvocationConfiguration.Output).ExecuteAsync(ct);
        });
        return cmd;
    }

    private sealed record Settings(int Entities, int Rate, TimeSpan Duration, int Regions, int Handoffs, int Moves);

    private enum Fate
    {
        Committed,
        Ambiguous,
        Aborted,
    }

    private sealed class Entity(int index, Guid id, Placement placement)
    {
        public readonly int Index = index;
        public readonly Guid Id = id;
        public Placement Placement = placement;
        public long LastSeq;
        public readonly ConcurrentDictionary<long, Fate> Seqs = new();
    }

    private sealed class Owner(string name, string session, SceneTree tree)
    {
        public readonly string Name = name;
        public readonly string Session = session;
        public readonly SceneTree Tree = tree;
        public readonly HashSet<Entity> Owned = [];
        public Owner Other = null!;
        public long Ticks;
        public long Committed;
        public long Ambiguous;
        public long Aborted;
        public long Handoffs;
        public long Moves;
        public long Errors;
        public string? LastError;
    }

    private sealed class Checker(string name)
    {
        public readonly string Name = name;
        public readonly object Gate = new();
        public readonly Dictionary<Guid, long> LastSeq = [];
        public readonly HashSet<(Guid, long)> Seen = [];
        public readonly Dictionary<Guid, string?> Region = [];
        public readonly List<double> LatencyMs = [];
        public CanopyTimestamp SeqResolved;
        public CanopyTimestamp RegionResolved;
        public long Updates;
        public long Gaps;
        public long Reorders;
        public long Duplicates;
        public long Phantoms;
        public long RegionErrors;
        public long Batches;
        public readonly List<string> Problems = [];

        public void Problem(string what)
        {
            if (Problems.Count < 10)
            {
                Problems.Add(what);
            }
        }
    }

    private sealed class Run(string[] addresses, Settings s, TextWriter output)
    {
        private readonly string _run = Convert.ToHexString(BitConverter.GetBytes(Random.Shared.NextInt64())).ToLowerInvariant()[..8];
        private readonly List<Entity> _entities = [];
        private readonly Dictionary<Guid, Entity> _byId = [];
        private readonly List<CanopyClient> _clients = [];
        private CanopyTimestamp _lastCommit;
        private readonly object _commitGate = new();

        private string[] Rotated(int i) => [.. addresses.Skip(i % addresses.Length), .. addresses.Take(i % addresses.Length)];

        private string Region(int i) => $"cell:{i}";

        private static byte[] V(GodotVariant v) => VariantCodec.Encode(v);

        public async Task<int> ExecuteAsync(CancellationToken ct)
        {
            try
            {
                return await RunAsync(ct);
            }
            finally
            {
                foreach (var c in _clients)
                {
                    await c.DisposeAsync();
                }
            }
        }

        private async Task<CanopyClient> ClientAsync(int i, CancellationToken ct)
        {
            CanopyClient c;
            try
            {
                c = await CanopyClient.ConnectAsync(Rotated(i), ClusterCli.ClientOptions(), ct);
            }
            catch (ArgumentException ex)
            {
                throw CliException.Usage($"{ex.Message} (for --host)");
            }

            _clients.Add(c);
            return c;
        }

        private void Committed(string? ts)
        {
            if (CanopyTimestamp.TryParse(ts, out var t))
            {
                lock (_commitGate)
                {
                    _lastCommit = CanopyTimestamp.Max(_lastCommit, t);
                }
            }
        }

        private async Task<int> RunAsync(CancellationToken ct)
        {
            var treeName = $"wl-{_run}";
            Console.Error.WriteLine($"tree workload {treeName}: {s.Entities} entities in {s.Regions} regions at {s.Rate} Hz for {Duration.Format(s.Duration)}, " +
                $"{s.Handoffs} handoffs/s, {s.Moves} moves/s; owners and subscribers over {addresses.Length} host(s)");

            // Setup: the World node and the entities (20 per transaction), each starting at seq 0.
            var setupTree = SceneTree.ForClient(await ClientAsync(0, ct), treeName);
            var world = (await setupTree.SpawnAsync(SceneTree.Root, NodeSpec.Class("World", "Node3D"), ct)).Value.Id;
            for (var i = 0; i < s.Entities; i++)
            {
                var e = new Entity(i, Guid.NewGuid(), Placement.InRegion(Region(i % s.Regions)));
                e.Seqs[0] = Fate.Committed;
                _entities.Add(e);
                _byId[e.Id] = e;
            }

            foreach (var chunk in _entities.Chunk(20))
            {
                await setupTree.RunAsync(async t =>
                {
                    foreach (var e in chunk)
                    {
                        await t.SpawnAsync(world, NodeSpec.Class($"E{e.Index}", "CharacterBody3D") with
                        {
                            Id = e.Id,
                            Placement = e.Placement,
                            Properties = new Dictionary<string, byte[]> { ["seq"] = V(0L), ["x"] = V(0.0) },
                        });
                    }
                }, ct);
            }

            // Owners: A enters at the first host, B at the second; each owns half.
            var owners = new List<Owner>();
            for (var i = 0; i < 2; i++)
            {
                var tree = SceneTree.ForClient(await ClientAsync(i, ct), treeName);
                owners.Add(new Owner(i == 0 ? "A" : "B", $"{treeName}-{(i == 0 ? "A" : "B")}", tree));
            }

            owners[0].Other = owners[1];
            owners[1].Other = owners[0];
            var sessions = new List<OwnerSession>();
            foreach (var o in owners)
            {
                sessions.Add(await o.Tree.StartSessionAsync(o.Session, ct: ct));
                var mine = _entities.Where(e => e.Index % 2 == (o.Name == "A" ? 0 : 1)).ToList();
                foreach (var chunk in mine.Chunk(50))
                {
                    await o.Tree.TakeOwnershipAsync(o.Session, chunk.Select(e => e.Id).ToList(), ct);
                }

                o.Owned.UnionWith(mine);
            }

            // Subscribers: one per host, each following the subtree (seqs) and every region (placement).
            using var stopSubs = CancellationTokenSource.CreateLinkedTokenSource(ct);
            var checkers = new List<Checker>();
            var subTasks = new List<Task>();
            for (var i = 0; i < Math.Max(1, Math.Min(addresses.Length, 2)); i++)
            {
                var client = await ClientAsync(i, ct);
                var tree = SceneTree.ForClient(client, treeName);
                var checker = new Checker($"subscriber@{Rotated(i)[0]}");
                checkers.Add(checker);
                subTasks.Add(FollowSeqsAsync(tree, world, checker, stopSubs.Token));
                subTasks.Add(FollowRegionsAsync(tree, checker, stopSubs.Token));
            }

            // Wait until every subscriber has its snapshot before writing (so latency counts only live updates).
            var ready = Stopwatch.StartNew();
            while (checkers.Any(c => c.SeqResolved == CanopyTimestamp.Zero || c.RegionResolved == CanopyTimestamp.Zero))
            {
                if (ready.Elapsed > TimeSpan.FromSeconds(30))
                {
                    output.WriteLine("FAIL: subscribers did not get their snapshots within 30 s");
                    return 1;
                }

                await Task.Delay(20, ct);
            }

            // The owners write for the duration.
            var sw = Stopwatch.StartNew();
            using (var stopWriters = CancellationTokenSource.CreateLinkedTokenSource(ct))
            {
                stopWriters.CancelAfter(s.Duration);
                var progress = Task.Run(async () =>
                {
                    while (!stopWriters.IsCancellationRequested)
                    {
                        await Task.Delay(5000, stopWriters.Token).ContinueWith(_ => { }, TaskScheduler.Default);
                        Console.Error.WriteLine($"  {sw.Elapsed.TotalSeconds:0}s: " + string.Join("; ", owners.Select(o =>
                            $"{o.Name}: {Interlocked.Read(ref o.Committed)} committed, {Interlocked.Read(ref o.Ambiguous)} ambiguous, {Interlocked.Read(ref o.Errors)} errors")) +
                            " | " + string.Join("; ", checkers.Select(c => $"{c.Name}: {Interlocked.Read(ref c.Updates)} updates")));
                    }
                });
                await Task.WhenAll(owners.Select(o => OwnerLoopAsync(o, stopWriters.Token)));
                await progress;
            }

            var wrote = sw.Elapsed;
            foreach (var session in sessions)
            {
                await session.DisposeAsync();
            }

            // Drain: every subscriber's resolved timestamps pass the last commit.
            CanopyTimestamp last;
            lock (_commitGate)
            {
                last = _lastCommit;
            }

            var drain = Stopwatch.StartNew();
            while (checkers.Any(c => c.SeqResolved < last || c.RegionResolved < last) && drain.Elapsed < TimeSpan.FromSeconds(60))
            {
                await Task.Delay(50, ct);
            }

            var drained = checkers.All(c => c.SeqResolved >= last && c.RegionResolved >= last);
            await stopSubs.CancelAsync();
            foreach (var t in subTasks)
            {
                try
                {
                    await t;
                }
                catch (OperationCanceledException)
                {
                }
            }

            return Report(owners, checkers, wrote, drained);
        }

        private async Task OwnerLoopAsync(Owner o, CancellationToken stop)
        {
            var period = TimeSpan.FromSeconds(1.0 / s.Rate);
            var next = Stopwatch.GetTimestamp();
            var handoffEvery = s.Handoffs > 0 ? TimeSpan.FromSeconds(2.0 / s.Handoffs) : TimeSpan.MaxValue; // two owners share the rate
            var moveEvery = s.Moves > 0 ? TimeSpan.FromSeconds(2.0 / s.Moves) : TimeSpan.MaxValue;
            var lastHandoff = Stopwatch.StartNew();
            var lastMove = Stopwatch.StartNew();
            while (!stop.IsCancellationRequested)
            {
                var wait = Stopwatch.GetElapsedTime(Stopwatch.GetTimestamp(), next);
                if (wait > TimeSpan.Zero)
                {
                    try
                    {
                        await Task.Delay(wait, stop);
                    }
                    catch (OperationCanceledException)
                    {
                        return;
                    }
                }

                next += (long)(period.TotalSeconds * Stopwatch.Frequency);
                if (Stopwatch.GetTimestamp() - next > Stopwatch.Frequency)
                {
                    next = Stopwatch.GetTimestamp(); // more than a second behind: do not try to catch up
                }

                await TickAsync(o);
                if (lastHandoff.Elapsed >= handoffEvery)
                {
                    lastHandoff.Restart();
                    await HandoffAsync(o);
                }

                if (lastMove.Elapsed >= moveEvery)
                {
                    lastMove.Restart();
                    await MoveAsync(o);
                }
            }
        }

        private async Task TickAsync(Owner o)
        {
            List<Entity> owned;
            lock (o.Owned)
            {
                owned = [.. o.Owned];
            }

            if (owned.Count == 0)
            {
                return;
            }

            Interlocked.Increment(ref o.Ticks);
            var batch = new List<NodeProperties>(owned.Count);
            var seqs = new List<(Entity, long)>(owned.Count);
            foreach (var e in owned)
            {
                var seq = ++e.LastSeq;
                seqs.Add((e, seq));
                batch.Add(new NodeProperties(e.Id, new Dictionary<string, byte[]?> { ["seq"] = V(seq), ["x"] = V(seq * 0.1) }) { PlacementHint = e.Placement });
            }

            var fate = await WriteAsync(o, () => o.Tree.SetPropertiesAsync(o.Session, batch));
            foreach (var (e, seq) in seqs)
            {
                e.Seqs[seq] = fate;
            }
        }

        /// <summary>Runs one tree transaction; its fate (an exception that is not a refusal counts as ambiguous).</summary>
        private async Task<Fate> WriteAsync(Owner o, Func<Task<string?>> write)
        {
            try
            {
                Committed(await write());
                Interlocked.Increment(ref o.Committed);
                return Fate.Committed;
            }
            catch (TreeTransactionException e) when (!e.Ambiguous)
            {
                Interlocked.Increment(ref o.Aborted);
                o.LastError = e.Message;
                return Fate.Aborted;
            }
            catch (Exception e) when (e is TreeTransactionException or CanopyException or TimeoutException or IOException)
            {
                // Ambiguous, or the server died mid-commit: it may or may not have happened.
                Interlocked.Increment(ref o.Ambiguous);
                o.LastError = e.Message;
                return Fate.Ambiguous;
            }
            catch (TreeException e)
            {
                Interlocked.Increment(ref o.Errors);
                o.LastError = e.Message;
                return Fate.Aborted; // refused before writing (e.g. not the owner): nothing was written
            }
        }

        private async Task HandoffAsync(Owner from)
        {
            Entity? e;
            lock (from.Owned)
            {
                e = from.Owned.Count > 1 ? from.Owned.ElementAt(Random.Shared.Next(from.Owned.Count)) : null;
                if (e is not null)
                {
                    from.Owned.Remove(e);
                }
            }

            if (e is null)
            {
                return;
            }

            var to = from.Other;
            var seq = ++e.LastSeq;
            var fate = await WriteAsync(from, () => from.Tree.HandoffAsync(from.Session, to.Session, e.Id, new Dictionary<string, byte[]?> { ["seq"] = V(seq) }));
            e.Seqs[seq] = fate;
            var newOwner = fate switch
            {
                Fate.Committed => to,
                Fate.Aborted => from,
                _ => await OwnerOfAsync(from, e) == to.Session ? to : from,
            };
            if (fate == Fate.Committed)
            {
                Interlocked.Increment(ref from.Handoffs);
            }

            lock (newOwner.Owned)
            {
                newOwner.Owned.Add(e);
            }
        }

        private async Task<string?> OwnerOfAsync(Owner o, Entity e)
        {
            for (var attempt = 0; ; attempt++)
            {
                try
                {
                    return (await o.Tree.GetOwnerAsync(e.Id)).Session;
                }
                catch (Exception ex) when (attempt < 20 && ex is TreeTransactionException or CanopyException or TimeoutException)
                {
                    await Task.Delay(250);
                }
            }
        }

        private async Task MoveAsync(Owner o)
        {
            Entity? e;
            lock (o.Owned)
            {
                e = o.Owned.Count > 0 ? o.Owned.ElementAt(Random.Shared.Next(o.Owned.Count)) : null;
            }

            if (e is null || s.Regions < 2)
            {
                return;
            }

            var current = int.Parse(e.Placement.Region!["cell:".Length..], CultureInfo.InvariantCulture);
            var target = Placement.InRegion(Region((current + 1) % s.Regions));
            var fate = await WriteAsync(o, async () => (await o.Tree.MoveAsync(e.Id, target)).Timestamp);
            if (fate == Fate.Committed)
            {
                e.Placement = target;
                Interlocked.Increment(ref o.Moves);
            }
            else if (fate == Fate.Ambiguous)
            {
                // Where is it? The hint only saves a read; a wrong one is corrected by the locator.
                e.Placement = target;
            }
        }

        // ------------------------------------------------------------ checking subscribers

        private async Task FollowSeqsAsync(SceneTree tree, Guid world, Checker c, CancellationToken ct)
        {
            var seqOf = new Func<IReadOnlyDictionary<string, byte[]?>, long?>(props =>
                props.TryGetValue("seq", out var b) && b is not null && VariantCodec.TryDecode(b, out var v, out _) && v is VariantInt i ? i.Value : null);
            await foreach (var batch in tree.WatchAsync(TreeInterest.OfSubtree(world), null, null, ct))
            {
                var now = DateTimeOffset.UtcNow;
                lock (c.Gate)
                {
                    c.Batches++;
                    foreach (var ev in batch.Events)
                    {
                        if (!_byId.TryGetValue(ev.Node, out var e))
                        {
                            continue; // World itself
                        }

                        if (ev.Kind == TreeEventKind.Leave)
                        {
                            c.Problem($"{e.Index} left the subtree at {ev.Timestamp}");
                            c.RegionErrors++;
                            continue;
                        }

                        if (seqOf(ev.Properties) is not { } seq)
                        {
                            continue;
                        }

                        if (!batch.IsSnapshot)
                        {
                            c.Updates++;
                            c.LatencyMs.Add((now - ev.Timestamp.Wall).TotalMilliseconds);
                        }

                        if (!c.Seen.Add((e.Id, seq)))
                        {
                            c.Duplicates++;
                            c.Problem($"entity {e.Index} seq {seq} seen twice (at {ev.Timestamp})");
                        }

                        var last = c.LastSeq.TryGetValue(e.Id, out var l) ? l : -1;
                        if (seq <= last)
                        {
                            c.Reorders++;
                            c.Problem($"entity {e.Index} seq {seq} after {last} (at {ev.Timestamp})");
                        }
                        else
                        {
                            for (var skipped = last + 1; skipped < seq && last >= 0; skipped++)
                            {
                                if (e.Seqs.TryGetValue(skipped, out var f) && f == Fate.Committed)
                                {
                                    c.Gaps++;
                                    c.Problem($"entity {e.Index}: acknowledged seq {skipped} skipped ({last} → {seq} at {ev.Timestamp})");
                                }
                            }

                            c.LastSeq[e.Id] = seq;
                        }

                        if (e.Seqs.TryGetValue(seq, out var fate) && fate == Fate.Aborted)
                        {
                            c.Phantoms++;
                            c.Problem($"entity {e.Index}: seq {seq} seen but its transaction aborted");
                        }
                    }

                    c.SeqResolved = batch.Resolved;
                }
            }
        }

        private async Task FollowRegionsAsync(SceneTree tree, Checker c, CancellationToken ct)
        {
            var regions = Enumerable.Range(0, s.Regions).Select(Region).ToArray();
            await foreach (var batch in tree.WatchAsync(TreeInterest.OfRegions(regions), null, null, ct))
            {
                lock (c.Gate)
                {
                    foreach (var ev in batch.Events)
                    {
                        switch (ev.Kind)
                        {
                            case TreeEventKind.Enter:
                                if (c.Region.ContainsKey(ev.Node))
                                {
                                    c.RegionErrors++;
                                    c.Problem($"node {ev.Node} entered the regions twice at {ev.Timestamp}");
                                }

                                c.Region[ev.Node] = ev.Record?.Placement.Region;
                                break;
                            case TreeEventKind.Update when ev.Record is not null:
                                c.Region[ev.Node] = ev.Record.Placement.Region;
                                break;
                            case TreeEventKind.Leave:
                                // Entities are never freed and only move between watched regions: a leave is a
                                // moment in which the entity was in no region.
                                c.RegionErrors++;
                                c.Problem($"node {ev.Node} left every region at {ev.Timestamp}");
                                c.Region.Remove(ev.Node);
                                break;
                        }
                    }

                    c.RegionResolved = batch.Resolved;
                }
            }
        }

        private int Report(List<Owner> owners, List<Checker> checkers, TimeSpan wrote, bool drained)
        {
            var committed = owners.Sum(o => o.Committed);
            var acked = _entities.Sum(e => e.Seqs.Count(x => x.Value == Fate.Committed && x.Key > 0));
            var ok = drained;
            foreach (var o in owners)
            {
                output.WriteLine($"owner {o.Name} ({o.Session}): {o.Ticks} ticks, {o.Committed} committed, {o.Ambiguous} ambiguous, {o.Aborted} aborted, {o.Errors} refused, " +
                    $"{o.Handoffs} handoffs, {o.Moves} moves{(o.LastError is null ? string.Empty : $"; last problem: {o.LastError}")}");
            }

            var allLatency = new List<double>();
            var totals = (gaps: 0L, reorders: 0L, dupes: 0L, phantoms: 0L, lost: 0L, regions: 0L);
            foreach (var c in checkers)
            {
                long lost = 0;
                long missingRegion = 0;
                lock (c.Gate)
                {
                    foreach (var e in _entities)
                    {
                        foreach (var (seq, fate) in e.Seqs)
                        {
                            if (fate == Fate.Committed && !c.Seen.Contains((e.Id, seq)))
                            {
                                lost++;
                                c.Problem($"entity {e.Index}: acknowledged seq {seq} never seen");
                            }
                        }

                        if (!c.Region.ContainsKey(e.Id))
                        {
                            missingRegion++;
                            c.Problem($"entity {e.Index} is in no region at the end");
                        }
                    }

                    totals.gaps += c.Gaps;
                    totals.reorders += c.Reorders;
                    totals.dupes += c.Duplicates;
                    totals.phantoms += c.Phantoms;
                    totals.lost += lost;
                    totals.regions += c.RegionErrors + missingRegion;
                    allLatency.AddRange(c.LatencyMs);
                    var lat = Percentiles(c.LatencyMs);
                    output.WriteLine($"{c.Name}: {c.Updates} updates in {c.Batches} batches; gaps {c.Gaps}, reorders {c.Reorders}, duplicates {c.Duplicates}, phantoms {c.Phantoms}, lost {lost}, " +
                        $"region errors {c.RegionErrors + missingRegion}; latency p50 {lat.P50:0.0} ms p99 {lat.P99:0.0} ms");
                    foreach (var p in c.Problems)
                    {
                        output.WriteLine($"  problem: {p}");
                    }
                }
            }

            ok &= totals.gaps + totals.reorders + totals.dupes + totals.phantoms + totals.lost + totals.regions == 0;
            var all = Percentiles(allLatency);
            var rate = acked / Math.Max(0.001, wrote.TotalSeconds);
            if (!drained)
            {
                output.WriteLine("FAIL: the subscribers' resolved timestamps did not pass the last commit within 60 s");
            }

            output.WriteLine($"{(ok ? "OK" : "FAIL")}: {s.Entities} entities, {acked} acknowledged updates ({rate:0}/s of {s.Entities * s.Rate}/s asked) in {committed} transactions, " +
                $"{owners.Sum(o => o.Handoffs)} handoffs, {owners.Sum(o => o.Moves)} moves, {owners.Sum(o => o.Ambiguous)} ambiguous; " +
                $"gaps {totals.gaps}, reorders {totals.reorders}, duplicates {totals.dupes}, phantoms {totals.phantoms}, lost {totals.lost}, region errors {totals.regions}; " +
                $"commit→subscriber p50 {all.P50:0.0} ms p99 {all.P99:0.0} ms");
            return ok ? 0 : 1;
        }

        private static (double P50, double P99) Percentiles(List<double> values)
        {
            if (values.Count == 0)
            {
                return (0, 0);
            }

            var sorted = values.Order().ToArray();
            return (sorted[(int)(0.50 * (sorted.Length - 1))], sorted[(int)(0.99 * (sorted.Length - 1))]);
        }
    }
}
