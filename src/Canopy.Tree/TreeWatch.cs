// Subscriptions to the scene tree: a subtree or a set of regions, as consistent batches of node events
// ====================================================================================================
//
// What it guarantees (docs/subscriptions.md). WatchAsync yields first a snapshot (every node of the subscription at a
// timestamp T, as Enter events; skipped when resuming from a timestamp), then batches: each holds the events of every
// commit in (previous resolved, resolved], in commit-timestamp order, and after applying a batch the subscriber's copy
// equals the subscription's nodes at `resolved`. Nothing is missed or repeated across lease moves, leaseholder crashes
// and reconnects (the key-level guarantees of CanopyClient.WatchAsync), and a transaction's changes — a spawn with its
// properties, a move between two watched regions, a handoff with its final values — are in one batch, at one timestamp.
//
// How. It watches the key spans that hold the subscription (the whole tree's six spans for a subtree, one span per
// region) from T and keeps a copy of every node home seen in them (record and properties). The copy starts as a
// consistent scan of the spans at T (ScanAtAsync). Each group of changes at one timestamp is applied to the copy, then
// the member set is recomputed (a subtree: the nodes reachable from its root through parent links; regions: every node
// with a record in them) and compared with the set before: nodes that left get Leave (descendants before ancestors),
// nodes that entered get Enter with their whole record and properties (ancestors first), members whose record or
// properties changed get Update (record fields when the record changed, the changed properties, null = deleted).
//
// Costs and limits. A subtree subscription keeps and watches the whole tree (a node reparented into the subtree must
// arrive with its properties, which only a copy can give); region subscriptions keep only their regions. The copy is
// in memory. Resuming needs the store's history at the resume timestamp (never garbage-collected today).
namespace Canopy.Tree;

using System.Runtime.CompilerServices;
using Canopy.Client;

/// <summary>What a subscription covers.</summary>
public sealed record TreeInterest
{
    private TreeInterest(Guid? subtree, IReadOnlyList<string>? regions)
    {
        Subtree = subtree;
        Regions = regions;
    }

    /// <summary>The root of a subtree subscription (<see cref="SceneTree.Root"/>: the whole tree), or null.</summary>
    public Guid? Subtree { get; }

    /// <summary>The regions of a region subscription, or null.</summary>
    public IReadOnlyList<string>? Regions { get; }

    public static TreeInterest OfSubtree(Guid root) => new(root, null);

    public static TreeInterest WholeTree => new(SceneTree.Root, null);

    public static TreeInterest OfRegions(params string[] regions)
    {
        if (regions.Length == 0)
        {
            throw new ArgumentException("a region subscription needs at least one region", nameof(regions));
        }

        foreach (var r in regions)
        {
            TreeKeys.ValidateRegion(r);
        }

        return new(null, regions.Distinct(StringComparer.Ordinal).ToArray());
    }
}

public enum TreeEventKind
{
    /// <summary>The node entered the subscription (spawned, moved or reparented into it): its whole record and properties.</summary>
    Enter,

    /// <summary>A member changed: <see cref="TreeEvent.Record"/> when the record changed, the changed properties.</summary>
    Update,

    /// <summary>The node left the subscription (freed, or moved or reparented out of it).</summary>
    Leave,
}

/// <summary>
/// One node's change at one timestamp. Enter: <see cref="Record"/> and every property. Update: <see cref="Record"/>
/// (null when unchanged) and the changed properties (a null value: deleted). Leave: only the node.
/// </summary>
public sealed record TreeEvent(TreeEventKind Kind, CanopyTimestamp Timestamp, Guid Node, NodeRecord? Record, IReadOnlyDictionary<string, byte[]?> Properties);

/// <summary>
/// A consistent step of a subscription: apply <see cref="Events"/> in order and the copy is the subscription at
/// <see cref="Resolved"/>. The first batch of a fresh subscription is the snapshot (<see cref="IsSnapshot"/>: Enter
/// events for every member at <see cref="Resolved"/>).
/// </summary>
public sealed record TreeBatch(IReadOnlyList<TreeEvent> Events, CanopyTimestamp Resolved, bool IsSnapshot);

/// <summary>Streams a subscription of one tree (see the file header).</summary>
public sealed class TreeWatcher(CanopyClient client, TreeKeys keys)
{
    private sealed class Home
    {
        public NodeRecord? Record;
        public readonly Dictionary<string, byte[]> Props = new(StringComparer.Ordinal);
    }

    /// <summary>
    /// Streams <paramref name="interest"/>: a snapshot then batches (fresh), or batches after <paramref name="from"/>
    /// (resume: the caller has the subscription as of <paramref name="from"/>, a resolved timestamp it was given).
    /// </summary>
    public async IAsyncEnumerable<TreeBatch> WatchAsync(TreeInterest interest, CanopyTimestamp? from = null, WatchOptions? options = null, [EnumeratorCancellation] CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(interest);
        var spans = interest.Regions is { } regions ? regions.Select(r => keys.Region(r)).Select(s => (s.Start, (byte[]?)s.End)).ToList() : keys.All().Select(s => (s.Start, (byte[]?)s.End)).ToList();
        var start = from ?? await client.NowAsync(ct).ConfigureAwait(false);

        // The copy at `start`: one consistent scan of the spans at that timestamp.
        var homes = new Dictionary<Guid, Home>();
        foreach (var (s, e) in spans)
        {
            foreach (var row in await client.ScanAtAsync(s, e, start, 0, ct).ConfigureAwait(false))
            {
                if (keys.ParseHome(row.Key) is { } hk && hk.Suffix != (byte)'c')
                {
                    Apply(homes, hk, row.Value);
                }
            }
        }

        var members = Members(interest, homes);
        if (from is null)
        {
            yield return new TreeBatch(ParentsFirst(members).Select(id => EnterEvent(id, start, homes)).ToList(), start, IsSnapshot: true);
        }

        await foreach (var batch in client.WatchAsync(spans, start, options, ct).ConfigureAwait(false))
        {
            var events = new List<TreeEvent>();
            var i = 0;
            while (i < batch.Changes.Count)
            {
                var ts = batch.Changes[i].Timestamp;

                // What each touched record and property was before this commit, to report only real changes (a move
                // re-keys every property of a node without changing its value).
                var recordsBefore = new Dictionary<Guid, NodeRecord?>();
                var propsBefore = new Dictionary<(Guid Node, string Name), byte[]?>();
                for (; i < batch.Changes.Count && batch.Changes[i].Timestamp == ts; i++)
                {
                    var c = batch.Changes[i];
                    if (keys.ParseHome(c.Key) is not { } hk || hk.Suffix == (byte)'c')
                    {
                        continue; // locators, sessions, children entries: membership follows the records' parent links
                    }

                    var home = homes.GetValueOrDefault(hk.Node);
                    if (hk.IsRecord)
                    {
                        recordsBefore.TryAdd(hk.Node, home?.Record);
                    }
                    else if (hk.IsProperty)
                    {
                        propsBefore.TryAdd((hk.Node, hk.Name), home?.Props.GetValueOrDefault(hk.Name));
                    }

                    Apply(homes, hk, c.Value);
                }

                var recordsChanged = recordsBefore.Where(r => r.Value != homes.GetValueOrDefault(r.Key)?.Record).Select(r => r.Key).ToHashSet();
                var propsChanged = new Dictionary<Guid, HashSet<string>>();
                foreach (var ((node, name), old) in propsBefore)
                {
                    var now = homes.GetValueOrDefault(node)?.Props.GetValueOrDefault(name);
                    if (old is null ? now is null : now is not null && old.AsSpan().SequenceEqual(now))
                    {
                        continue;
                    }

                    if (!propsChanged.TryGetValue(node, out var set))
                    {
                        propsChanged[node] = set = new HashSet<string>(StringComparer.Ordinal);
                    }

                    set.Add(name);
                }

                var before = members;
                if (recordsChanged.Count > 0)
                {
                    members = Members(interest, homes);
                }

                // Leaves (descendants first, by the depth they had), enters (ancestors first), then updates.
                var left = before.Keys.Where(id => !members.ContainsKey(id)).OrderByDescending(id => before[id]).ToList();
                events.AddRange(left.Select(id => new TreeEvent(TreeEventKind.Leave, ts, id, null, NoProps)));
                var entered = members.Keys.Where(id => !before.ContainsKey(id)).ToHashSet();
                events.AddRange(ParentsFirst(members.Where(m => entered.Contains(m.Key))).Select(id => EnterEvent(id, ts, homes)));
                foreach (var id in recordsChanged.Union(propsChanged.Keys).Where(id => members.ContainsKey(id) && before.ContainsKey(id)))
                {
                    var props = new Dictionary<string, byte[]?>(StringComparer.Ordinal);
                    if (propsChanged.TryGetValue(id, out var names))
                    {
                        foreach (var n in names)
                        {
                            props[n] = homes[id].Props.TryGetValue(n, out var v) ? v : null;
                        }
                    }

                    events.Add(new TreeEvent(TreeEventKind.Update, ts, id, recordsChanged.Contains(id) ? homes[id].Record : null, props));
                }
            }

            yield return new TreeBatch(events, batch.Resolved, IsSnapshot: false);
        }
    }

    private static readonly IReadOnlyDictionary<string, byte[]?> NoProps = new Dictionary<string, byte[]?>();

    private static TreeEvent EnterEvent(Guid id, CanopyTimestamp ts, Dictionary<Guid, Home> homes)
    {
        var h = homes[id];
        return new TreeEvent(TreeEventKind.Enter, ts, id, h.Record, h.Props.ToDictionary(p => p.Key, p => (byte[]?)p.Value, StringComparer.Ordinal));
    }

    /// <summary>Applies one home key's new value (null: deleted) to the copy.</summary>
    private static void Apply(Dictionary<Guid, Home> homes, TreeKeys.HomeKey hk, byte[]? value)
    {
        if (!homes.TryGetValue(hk.Node, out var home))
        {
            if (value is null)
            {
                return; // a delete of something never seen (e.g. the old home of a node moved in)
            }

            homes[hk.Node] = home = new Home();
        }

        if (hk.IsRecord)
        {
            if (value is null)
            {
                // A record deleted at one placement may be re-created at another in the same commit (a move): only
                // drop it when it is the placement we hold.
                if (home.Record is { } r && r.Placement == hk.Placement)
                {
                    home.Record = null;
                }
            }
            else
            {
                try
                {
                    home.Record = TreeCodec.DecodeRecord(value);
                }
                catch (TreeFormatException)
                {
                    return; // not a record we can read: left as it was
                }
            }
        }
        else if (value is null)
        {
            if (home.Record is null || home.Record.Placement == hk.Placement)
            {
                home.Props.Remove(hk.Name);
            }
        }
        else
        {
            home.Props[hk.Name] = value;
        }

        if (home.Record is null && home.Props.Count == 0)
        {
            homes.Remove(hk.Node);
        }
    }

    /// <summary>The members and their depth (0 = the subscription's top).</summary>
    private static Dictionary<Guid, int> Members(TreeInterest interest, Dictionary<Guid, Home> homes)
    {
        var members = new Dictionary<Guid, int>();
        if (interest.Regions is not null)
        {
            foreach (var (id, h) in homes)
            {
                if (h.Record is not null)
                {
                    members[id] = Depth(id, homes);
                }
            }

            return members;
        }

        var root = interest.Subtree!.Value;
        var children = new Dictionary<Guid, List<Guid>>();
        foreach (var (id, h) in homes)
        {
            if (h.Record is { } r)
            {
                if (!children.TryGetValue(r.Parent, out var list))
                {
                    children[r.Parent] = list = [];
                }

                list.Add(id);
            }
        }

        var queue = new Queue<(Guid, int)>();
        if (root == SceneTree.Root)
        {
            queue.Enqueue((root, -1));
        }
        else if (homes.TryGetValue(root, out var rh) && rh.Record is not null)
        {
            members[root] = 0;
            queue.Enqueue((root, 0));
        }

        while (queue.Count > 0)
        {
            var (id, depth) = queue.Dequeue();
            if (children.TryGetValue(id, out var kids))
            {
                foreach (var k in kids)
                {
                    if (members.TryAdd(k, depth + 1))
                    {
                        queue.Enqueue((k, depth + 1));
                    }
                }
            }
        }

        return members;
    }

    private static int Depth(Guid id, Dictionary<Guid, Home> homes)
    {
        var depth = 0;
        var cur = id;
        while (depth < 1000 && homes.TryGetValue(cur, out var h) && h.Record is { } r && r.Parent != SceneTree.Root)
        {
            cur = r.Parent;
            depth++;
        }

        return depth;
    }

    /// <summary>Members ordered by depth, ancestors first (then id, for a stable order).</summary>
    private static IEnumerable<Guid> ParentsFirst(IEnumerable<KeyValuePair<Guid, int>> members) =>
        members.OrderBy(m => m.Value).ThenBy(m => m.Key).Select(m => m.Key);
}
