// The scene tree (src/Canopy.Tree, docs/tree.md) on the in-process 3-server cluster: every operation is one
// transaction over the six static user ranges. Each test uses its own tree (its own key namespace).
using System.Diagnostics;
using System.Text;
using Canopy.Client;
using Canopy.Tree;
using Xunit.Abstractions;

namespace Canopy.Integration.Tests;

[Collection("txn-cluster")]
public sealed class TreeTests(InProcessCluster cluster, ITestOutputHelper output)
{
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(15);

    private SceneTree NewTree(string what) => SceneTree.ForClient(cluster.Client, $"{what}-{Guid.NewGuid().ToString("N")[..8]}");

    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);

    private static string S(byte[] b) => Encoding.UTF8.GetString(b);

    private static Dictionary<string, byte[]> Props(params (string Name, string Value)[] props) =>
        props.ToDictionary(p => p.Name, p => B(p.Value));

    /// <summary>A UUID whose hash places it on <paramref name="shard"/>.</summary>
    private static Guid IdOnShard(int shard)
    {
        while (true)
        {
            var id = Guid.NewGuid();
            if (TreeKeys.ShardOf(id) == shard)
            {
                return id;
            }
        }
    }

    /// <summary>A region id whose keys land on <paramref name="shard"/>.</summary>
    private static string RegionOnShard(int shard, string name)
    {
        for (var i = 0; ; i++)
        {
            var region = $"{name}-{i}";
            if (TreeKeys.ShardOfRegion(region) == shard)
            {
                return region;
            }
        }
    }

    /// <summary>Every key of the tree, read outside any transaction (six scans, one per shard).</summary>
    private async Task<List<byte[]>> AllKeysAsync(SceneTree tree)
    {
        var keys = new List<byte[]>();
        foreach (var (start, end) in tree.Keys.All())
        {
            keys.AddRange((await cluster.Client.ScanAsync(start, end)).Select(r => r.Key));
        }

        return keys;
    }

    private static bool Mentions(byte[] key, Guid id) => key.AsSpan().IndexOf(TreeKeys.UuidBytes(id)) >= 0;

    private async Task<ulong> RangeOfAsync(byte[] key)
    {
        var ranges = await cluster.Client.ListRangesAsync();
        return ranges.Single(r => key.AsSpan().SequenceCompareTo(r.StartKey) >= 0 && (r.EndKey is null || key.AsSpan().SequenceCompareTo(r.EndKey) < 0)).RangeId;
    }

    [Fact]
    public async Task HashPlacementSpreadsOverEverySixRangesAndRegionsStayTogether()
    {
        var tree = NewTree("spread");
        var ranges = new HashSet<ulong>();
        for (var shard = 0; shard < TreeKeys.ShardCount; shard++)
        {
            ranges.Add(await RangeOfAsync(tree.Keys.Record(IdOnShard(shard), Placement.Hashed)));
        }

        Assert.Equal(6, ranges.Count);
        var counts = new int[TreeKeys.ShardCount];
        for (var i = 0; i < 6000; i++)
        {
            counts[TreeKeys.ShardOf(Guid.NewGuid())]++;
        }

        Assert.All(counts, c => Assert.InRange(c, 800, 1200));

        // A region's keys share one prefix: every node of it sorts inside its span.
        var region = Placement.InRegion("cell:3:-7");
        var (start, end) = tree.Keys.Region("cell:3:-7");
        foreach (var key in new[] { tree.Keys.Record(Guid.NewGuid(), region), tree.Keys.Property(Guid.NewGuid(), region, "position"), tree.Keys.Child(Guid.NewGuid(), region, "Gun") })
        {
            Assert.True(key.AsSpan().SequenceCompareTo(start) >= 0 && key.AsSpan().SequenceCompareTo(end) < 0);
        }
    }

    /// <summary>The layout is persistent: these bytes (docs/tree.md) must never change without a new layout version.</summary>
    [Fact]
    public void KeyLayoutAndEncodingsAreStable()
    {
        var keys = new TreeKeys("w");
        var u = Guid.Parse("00112233-4455-6677-8899-aabbccddeeff");
        Assert.Equal(0xb3a14138c5a35290UL, TreeKeys.Hash("cell:3:-7"u8));
        Assert.Equal(0, TreeKeys.ShardOf(SceneTree.Root));
        Assert.Equal("610101774800112233445566778899AABBCCDDEEFF6E", Convert.ToHexString(keys.Record(u, Placement.Hashed)));
        Assert.Equal("61010177520963656C6C3A333A2D3700112233445566778899AABBCCDDEEFF70706F736974696F6E",
            Convert.ToHexString(keys.Property(u, Placement.InRegion("cell:3:-7"), "position")));
        Assert.Equal("610101774C00112233445566778899AABBCCDDEEFF", Convert.ToHexString(keys.Locator(u)));
        Assert.Equal("6F0101775341", Convert.ToHexString(keys.Session("A")));

        var record = new NodeRecord(u, SceneTree.Root, "Gun", NodeKind.Class, "Node3D", "A", Placement.InRegion("r"));
        var encoded = TreeCodec.EncodeRecord(record);
        Assert.Equal("0100112233445566778899AABBCCDDEEFF00000000000000000000000000000000000347756E0000064E6F6465334400014101000172", Convert.ToHexString(encoded));
        Assert.Equal(record, TreeCodec.DecodeRecord(encoded));
        Assert.Equal(record, TreeCodec.DecodeRecord([.. encoded, 0xAB])); // later fields of version 1 are skipped
        Assert.Throws<TreeFormatException>(() => TreeCodec.DecodeRecord([2, .. encoded[1..]]));
        Assert.Throws<TreeFormatException>(() => TreeCodec.DecodeRecord(encoded[..20]));
    }

    [Fact]
    public async Task SpawnUnderAParentOnAnotherRangeIsOneMultiRangeTransaction()
    {
        var tree = NewTree("spawn");
        var parentRegion = RegionOnShard(0, "zone");
        var parent = (await tree.SpawnAsync(SceneTree.Root, NodeSpec.Class("World", "Node3D") with { Placement = Placement.InRegion(parentRegion) })).Value.Id;

        var childId = IdOnShard(3);
        var grandRegion = RegionOnShard(5, "zone");
        var spec = NodeSpec.Scene("Player", "res://player.tscn") with
        {
            Id = childId,
            Properties = Props(("position", "1,2,3"), ("health", "100")),
            Children = [NodeSpec.Class("Gun", "Node3D") with { Placement = Placement.InRegion(grandRegion), Properties = Props(("ammo", "30")) }],
        };
        var spawned = await tree.SpawnAsync(parent, spec);
        var grand = spawned.Value.Children.Single().Id;

        // The parent's index entry, the child's home and the grandchild's home lie on three different ranges.
        var entryKey = tree.Keys.Child(parent, Placement.InRegion(parentRegion), "Player");
        var childKey = tree.Keys.Record(childId, Placement.Hashed);
        var grandKey = tree.Keys.Record(grand, Placement.InRegion(grandRegion));
        Assert.Equal(3, new[] { await RangeOfAsync(entryKey), await RangeOfAsync(childKey), await RangeOfAsync(grandKey) }.Distinct().Count());

        var snap = await tree.ReadSubtreeAsync(parent);
        var player = Assert.Single(snap.Root.Children);
        Assert.Equal(childId, player.Id);
        Assert.Equal(NodeKind.Scene, player.Record.Kind);
        Assert.Equal("res://player.tscn", player.Record.Type);
        Assert.Equal(parent, player.Record.Parent);
        Assert.Equal("100", S(player.Properties["health"]));
        var gun = Assert.Single(player.Children);
        Assert.Equal("30", S(gun.Properties["ammo"]));
        Assert.Equal(grandRegion, gun.Record.Placement.Region);
        Assert.Equal(grand, await tree.ResolvePathAsync("/World/Player/Gun"));
        Assert.Equal(childId, Assert.Single(await tree.ListChildrenAsync(parent)).Id);
        Assert.Contains(await tree.ListRegionAsync(grandRegion), r => r.Id == grand);
        Assert.True(await cluster.NoIntentsAsync([entryKey, childKey, grandKey], TimeSpan.FromSeconds(10)), "intents of the spawn were not resolved");
    }

    [Fact]
    public async Task SiblingNamesAreUniqueAndARefusedSpawnWritesNothing()
    {
        var tree = NewTree("unique");
        var first = (await tree.SpawnAsync(SceneTree.Root, NodeSpec.Class("Enemy", "Node2D"))).Value.Id;
        var before = await AllKeysAsync(tree);

        var dupIds = new[] { IdOnShard(1), IdOnShard(2), IdOnShard(4) };
        var dup = NodeSpec.Class("Enemy", "Node2D") with
        {
            Id = dupIds[0],
            Properties = Props(("hp", "5")),
            Children =
            [
                NodeSpec.Class("A", "Node") with { Id = dupIds[1], Placement = Placement.InRegion("r-unique") },
                NodeSpec.Class("B", "Node") with { Id = dupIds[2] },
            ],
        };
        var e = await Assert.ThrowsAsync<NameConflictException>(() => tree.SpawnAsync(SceneTree.Root, dup));
        Assert.Equal(first, e.Existing);
        Assert.Equal("Enemy", e.Name);

        // The same within one spec: the second child's name clashes with the first's (after both were written).
        var clash = NodeSpec.Class("Squad", "Node") with
        {
            Id = Guid.NewGuid(),
            Children = [NodeSpec.Class("X", "Node") with { Id = Guid.NewGuid() }, NodeSpec.Class("X", "Node") with { Id = Guid.NewGuid() }],
        };
        await Assert.ThrowsAsync<NameConflictException>(() => tree.SpawnAsync(SceneTree.Root, clash));

        var after = await AllKeysAsync(tree);
        Assert.Equal(before.Select(Convert.ToHexString), after.Select(Convert.ToHexString));
        Assert.Equal(first, Assert.Single(await tree.ListChildrenAsync(SceneTree.Root)).Id);

        await Assert.ThrowsAsync<ArgumentException>(() => tree.SpawnAsync(SceneTree.Root, NodeSpec.Class("a/b", "Node")));
        await Assert.ThrowsAsync<NodeNotFoundException>(() => tree.SpawnAsync(Guid.NewGuid(), NodeSpec.Class("Orphan", "Node")));
        await Assert.ThrowsAsync<NodeExistsException>(() => tree.SpawnAsync(SceneTree.Root, NodeSpec.Class("Other", "Node") with { Id = first }));
    }

    [Fact]
    public async Task FreeingASubtreeRemovesEveryKeyOfIt()
    {
        var tree = NewTree("free");
        await tree.SpawnAsync(SceneTree.Root, NodeSpec.Class("Keep", "Node") with { Properties = Props(("k", "v")) });
        var kept = await AllKeysAsync(tree);

        var spec = NodeSpec.Class("Level", "Node3D") with
        {
            Placement = Placement.InRegion(RegionOnShard(2, "lvl")),
            Properties = Props(("seed", "42")),
            Children =
            [
                NodeSpec.Class("Room1", "Node3D") with
                {
                    Properties = Props(("lit", "true")),
                    Children = [NodeSpec.Scene("Chest", "res://chest.tscn") with { Placement = Placement.InRegion(RegionOnShard(4, "lvl")), Properties = Props(("gold", "9")) }],
                },
                NodeSpec.Class("Room2", "Node3D"),
            ],
        };
        var spawned = (await tree.SpawnAsync(SceneTree.Root, spec)).Value;
        var ids = spawned.AllIds().ToList();
        Assert.True((await AllKeysAsync(tree)).Count > kept.Count + ids.Count * 2);

        var freed = await tree.FreeAsync(spawned.Id);
        Assert.Equal(4, freed.Value);
        var after = await AllKeysAsync(tree);
        Assert.Equal(kept.Select(Convert.ToHexString), after.Select(Convert.ToHexString));
        Assert.DoesNotContain(after, k => ids.Any(id => Mentions(k, id)));
        foreach (var id in ids)
        {
            Assert.Null(await tree.GetNodeAsync(id));
        }

        await Assert.ThrowsAsync<NodeNotFoundException>(() => tree.FreeAsync(spawned.Id));
        await Assert.ThrowsAsync<RootNodeException>(() => tree.FreeAsync(SceneTree.Root));
    }

    [Fact]
    public async Task RenameKeepsNamesUniqueAndReparentRefusesCycles()
    {
        var tree = NewTree("reparent");
        var a = (await tree.SpawnAsync(SceneTree.Root, NodeSpec.Class("A", "Node") with
        {
            Children = [NodeSpec.Class("A1", "Node") with { Placement = Placement.InRegion("r1"), Children = [NodeSpec.Class("A2", "Node")] }],
        })).Value;
        var a1 = a.Children[0].Id;
        var a2 = a.Children[0].Children[0].Id;
        var b = (await tree.SpawnAsync(SceneTree.Root, NodeSpec.Class("B", "Node") with { Placement = Placement.InRegion("r2") })).Value.Id;

        await tree.RenameAsync(a1, "X");
        Assert.Equal(a1, await tree.ResolvePathAsync("/A/X"));
        Assert.Null(await tree.ResolvePathAsync("/A/A1"));
        Assert.Equal(a2, await tree.ResolvePathAsync("/A/X/A2"));
        Assert.Equal("X", (await tree.GetNodeAsync(a1))!.Record.Name);
        await Assert.ThrowsAsync<NameConflictException>(() => tree.RenameAsync(b, "A"));

        var cycle = await Assert.ThrowsAsync<TreeCycleException>(() => tree.ReparentAsync(a.Id, a2));
        Assert.Equal(a2, cycle.NewParent);
        await Assert.ThrowsAsync<TreeCycleException>(() => tree.ReparentAsync(a.Id, a1));
        await Assert.ThrowsAsync<TreeCycleException>(() => tree.ReparentAsync(a.Id, a.Id));
        Assert.Equal(a2, await tree.ResolvePathAsync("/A/X/A2")); // nothing changed

        await tree.ReparentAsync(a1, b);
        Assert.Equal(a2, await tree.ResolvePathAsync("/B/X/A2"));
        Assert.Empty(await tree.ListChildrenAsync(a.Id));
        Assert.Equal(b, (await tree.GetNodeAsync(a1))!.Record.Parent);

        // Now A may go under A2 (no longer its descendant), renamed on the way.
        await tree.ReparentAsync(a.Id, a2, "Again");
        Assert.Equal(a.Id, await tree.ResolvePathAsync("/B/X/A2/Again"));
        Assert.Equal(new[] { b }, (await tree.ListChildrenAsync(SceneTree.Root)).Select(c => c.Id));

        var x2 = (await tree.SpawnAsync(SceneTree.Root, NodeSpec.Class("X", "Node"))).Value.Id;
        await Assert.ThrowsAsync<NameConflictException>(() => tree.ReparentAsync(x2, b));
        await tree.ReparentAsync(x2, b, "X2");
        Assert.Equal(new[] { "X", "X2" }, (await tree.ListChildrenAsync(b)).Select(c => c.Name));
    }

    [Fact]
    public async Task MovingBetweenRegionsReKeysAtomicallyAndTheNodeStaysReachable()
    {
        var tree = NewTree("move");
        var r1 = RegionOnShard(1, "cell");
        var r2 = RegionOnShard(4, "cell");
        var r3 = RegionOnShard(5, "cell");
        var p = (await tree.SpawnAsync(SceneTree.Root, NodeSpec.Class("P", "Node"))).Value.Id;
        var n = (await tree.SpawnAsync(p, NodeSpec.Class("N", "CharacterBody3D") with
        {
            Placement = Placement.InRegion(r1),
            Properties = Props(("position", "0,0,0"), ("hp", "7")),
            Children = [NodeSpec.Class("C1", "Node"), NodeSpec.Class("C2", "Node") with { Placement = Placement.InRegion(r1) }],
        })).Value;
        var c1 = n.Children[0].Id;
        var c2 = n.Children[1].Id;

        await tree.MoveAsync(n.Id, Placement.InRegion(r2));
        var (r1Start, r1End) = tree.Keys.Region(r1);
        var r1Keys = (await cluster.Client.ScanAsync(r1Start, r1End)).Select(r => r.Key).ToList();
        Assert.All(r1Keys, k => Assert.True(Mentions(k, c2))); // only C2 stayed in r1
        var (r2Start, r2End) = tree.Keys.Region(r2);
        Assert.Equal(5, (await cluster.Client.ScanAsync(r2Start, r2End)).Count); // record, 2 properties, 2 index entries

        var view = (await tree.GetNodeAsync(n.Id))!;
        Assert.Equal(r2, view.Record.Placement.Region);
        Assert.Equal("7", S(view.Properties["hp"]));
        Assert.Equal(r2, (await tree.ListChildrenAsync(p)).Single().Placement.Region);
        Assert.Equal(c1, await tree.ResolvePathAsync("/P/N/C1"));
        Assert.Equal(n.Id, (await tree.GetNodeAsync(c1))!.Record.Parent);

        // Moves back and forth while readers look at both regions: the node is always in exactly one of them.
        var stop = new CancellationTokenSource();
        var reads = 0;
        var readers = Enumerable.Range(0, 2).Select(_ => Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                var (inR1, inR2) = (await tree.RunAsync(async t =>
                    ((await t.ListRegionAsync(r1)).Count(r => r.Id == n.Id), (await t.ListRegionAsync(r2)).Count(r => r.Id == n.Id)))).Value;
                Assert.Equal(1, inR1 + inR2);
                var snap = await tree.ReadSubtreeAsync(p);
                var node = Assert.Single(snap.Root.Children);
                Assert.Equal("7", S(node.Properties["hp"]));
                Assert.Equal(2, node.Children.Count);
                Interlocked.Increment(ref reads);
            }
        })).ToArray();
        for (var i = 0; i < 20; i++)
        {
            Assert.Equal(1, (await tree.MoveAsync(n.Id, Placement.InRegion(i % 2 == 0 ? r1 : r2))).Value);
        }

        await stop.CancelAsync();
        await Task.WhenAll(readers);
        output.WriteLine($"{reads} consistent reads during 20 moves");
        Assert.True(reads > 0);

        // The whole subtree: N (in r2), C1 (hashed) and C2 (r1) all land in r3.
        Assert.Equal(3, (await tree.MoveAsync(n.Id, Placement.InRegion(r3), subtree: true)).Value);
        Assert.Equal(new[] { c1, c2, n.Id }.Order(), (await tree.ListRegionAsync(r3)).Select(r => r.Id).Order());
        Assert.Empty(await tree.ListRegionAsync(r1));
        Assert.Empty(await tree.ListRegionAsync(r2));
        Assert.Equal(c2, await tree.ResolvePathAsync("/P/N/C2"));
        var all = await tree.ReadSubtreeAsync(SceneTree.Root);
        Assert.Equal(5, all.Root.SelfAndDescendants().Count()); // root, P, N, C1, C2
    }

    [Fact]
    public async Task ASubtreeReadIsOneConsistentSnapshot()
    {
        var tree = NewTree("snapshot");
        var p = (await tree.SpawnAsync(SceneTree.Root, NodeSpec.Class("P", "Node") with
        {
            Children =
            [
                NodeSpec.Class("X", "Node") with { Id = IdOnShard(0), Properties = Props(("v", "0")) },
                NodeSpec.Class("Y", "Node") with { Id = IdOnShard(5), Properties = Props(("v", "0")) },
            ],
        })).Value;
        var (x, y) = (p.Children[0].Id, p.Children[1].Id);

        var stop = new CancellationTokenSource();
        var reads = 0;
        var reader = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                var snap = await tree.ReadSubtreeAsync(p.Id);
                var values = snap.Root.Children.Select(c => S(c.Properties["v"])).ToList();
                Assert.Equal(2, values.Count);
                Assert.Equal(values[0], values[1]);
                Assert.NotNull(snap.Timestamp);
                Interlocked.Increment(ref reads);
            }
        });
        for (var i = 1; i <= 40; i++)
        {
            var v = B(i.ToString(System.Globalization.CultureInfo.InvariantCulture));
            await tree.SetPropertiesAsync(null,
            [
                new NodeProperties(x, new Dictionary<string, byte[]?> { ["v"] = v }),
                new NodeProperties(y, new Dictionary<string, byte[]?> { ["v"] = v }),
            ]);
        }

        await stop.CancelAsync();
        await reader;
        output.WriteLine($"{reads} snapshot reads during 40 two-range writes");
        Assert.True(reads > 0);
        var last = await tree.ReadSubtreeAsync(p.Id);
        Assert.All(last.Root.Children, c => Assert.Equal("40", S(c.Properties["v"])));
    }

    [Fact]
    public async Task OnlyTheOwnerWritesAnOwnedNode()
    {
        var tree = NewTree("owner");
        await tree.OpenSessionAsync("A");
        await tree.OpenSessionAsync("B");
        var node = (await tree.SpawnAsync(SceneTree.Root, NodeSpec.Class("Ship", "RigidBody3D") with { Owner = "A", Properties = Props(("pos", "a0")) })).Value.Id;
        var free = (await tree.SpawnAsync(SceneTree.Root, NodeSpec.Class("Rock", "StaticBody3D"))).Value.Id;

        var e = await Assert.ThrowsAsync<NotOwnerException>(() => tree.SetPropertyAsync("B", node, "pos", B("b1")));
        Assert.Equal("A", e.Owner);
        Assert.Equal("B", e.Session);
        Assert.Contains("'A'", e.Message, StringComparison.Ordinal);
        await Assert.ThrowsAsync<NotOwnerException>(() => tree.SetPropertyAsync(null, node, "pos", B("x")));

        // A batch with one refused node writes nothing at all.
        await Assert.ThrowsAsync<NotOwnerException>(() => tree.SetPropertiesAsync("B",
        [
            new NodeProperties(free, new Dictionary<string, byte[]?> { ["pos"] = B("rock-b") }),
            new NodeProperties(node, new Dictionary<string, byte[]?> { ["pos"] = B("b2") }),
        ]));
        Assert.False((await tree.GetNodeAsync(free))!.Properties.ContainsKey("pos"));

        await tree.SetPropertyAsync("A", node, "pos", B("a1"));
        Assert.Equal("a1", S((await tree.GetNodeAsync(node))!.Properties["pos"]));
        await tree.SetPropertyAsync("B", free, "pos", B("rock")); // unowned: anyone

        var held = await Assert.ThrowsAsync<OwnershipHeldException>(() => tree.TakeOwnershipAsync("B", [node]));
        Assert.Equal("A", held.Owner);
        await Assert.ThrowsAsync<NotOwnerException>(() => tree.ReleaseOwnershipAsync("B", [node]));
        await Assert.ThrowsAsync<NotOwnerException>(() => tree.HandoffAsync("B", "B", node));
        await Assert.ThrowsAsync<SessionNotFoundException>(() => tree.TakeOwnershipAsync("nobody", [free]));

        await tree.ReleaseOwnershipAsync("A", [node]);
        Assert.Null((await tree.GetOwnerAsync(node)).Session);
        await tree.TakeOwnershipAsync("B", [node]);
        await tree.SetPropertyAsync("B", node, "pos", B("b3"));
        Assert.Equal("B", (await tree.GetNodeAsync(node))!.Record.Owner);
    }

    [Fact]
    public async Task ALapsedLeaseLetsAnotherSessionTakeOverAndARenewedOneDoesNot()
    {
        var tree = NewTree("lease");
        var lease = TimeSpan.FromSeconds(1);
        var margin = tree.Options.MaxClockOffset;
        var node = (await tree.SpawnAsync(SceneTree.Root, NodeSpec.Class("Crate", "RigidBody2D"))).Value.Id;
        var renewed = (await tree.SpawnAsync(SceneTree.Root, NodeSpec.Class("Barrel", "RigidBody2D"))).Value.Id;
        await tree.OpenSessionAsync("B", TimeSpan.FromSeconds(30));

        // C renews by heartbeat (every lease/3); A does not.
        await using var c = await tree.StartSessionAsync("C", lease);
        await tree.TakeOwnershipAsync("C", [renewed]);
        var sw = Stopwatch.StartNew();
        var a = await tree.OpenSessionAsync("A", lease);
        await tree.TakeOwnershipAsync("A", [node]);
        await Assert.ThrowsAsync<OwnershipHeldException>(() => tree.TakeOwnershipAsync("B", [node]));

        // Wait for the condition (with a deadline): B gets the node once A's lease plus the clock margin has passed.
        while (true)
        {
            try
            {
                await tree.TakeOwnershipAsync("B", [node]);
                break;
            }
            catch (OwnershipHeldException)
            {
                Assert.True(sw.Elapsed < Deadline, "the lapsed lease was never taken over");
                await Task.Delay(50);
            }
        }

        output.WriteLine($"taken over after {sw.Elapsed.TotalMilliseconds:F0} ms (lease {lease.TotalMilliseconds} ms + margin {margin.TotalMilliseconds} ms)");
        Assert.True(sw.Elapsed >= lease + margin - TimeSpan.FromMilliseconds(100), $"taken after {sw.Elapsed} only");
        Assert.True(DateTimeOffset.UtcNow > a.ExpiresAt + margin);
        var refused = await Assert.ThrowsAsync<NotOwnerException>(() => tree.SetPropertyAsync("A", node, "pos", B("late")));
        Assert.Equal("B", refused.Owner);
        await tree.RenewSessionAsync("A"); // a renewal after the fact does not bring the node back
        await Assert.ThrowsAsync<NotOwnerException>(() => tree.SetPropertyAsync("A", node, "pos", B("late")));

        // Meanwhile C's heartbeat kept its lease: B could never take the barrel (C was started long enough ago).
        Assert.True(sw.Elapsed > lease + margin);
        var held = await Assert.ThrowsAsync<OwnershipHeldException>(() => tree.TakeOwnershipAsync("B", [renewed]));
        Assert.Equal("C", held.Owner);
        Assert.True(c.Renewals >= 2, $"{c.Renewals} renewals");
        Assert.True(c.IsLive);

        // Closing C ends its lease at once.
        await c.CloseAsync();
        await tree.TakeOwnershipAsync("B", [renewed]);
        Assert.Equal("B", (await tree.GetOwnerAsync(renewed)).Session);
    }

    [Fact]
    public async Task HandoffMovesOwnerAndFinalValuesAtomically()
    {
        var tree = NewTree("handoff");
        await tree.OpenSessionAsync("old", TimeSpan.FromSeconds(30));
        await tree.OpenSessionAsync("new", TimeSpan.FromSeconds(30));
        for (var round = 0; round < 3; round++)
        {
            var node = (await tree.SpawnAsync(SceneTree.Root, NodeSpec.Class($"Ball{round}", "RigidBody3D") with
            {
                Id = IdOnShard(round * 2),
                Owner = "old",
                Properties = Props(("seq", "0")),
            })).Value.Id;

            // The old owner writes seq = 1, 2, 3, … as fast as it can; the handoff lands in the middle.
            var committed = new List<(long Seq, HlcStamp Ts)>();
            var refusedAfter = 0;
            var firstRefused = 0L;
            var enoughWritten = new TaskCompletionSource();
            var writer = Task.Run(async () =>
            {
                var sw = Stopwatch.StartNew();
                for (long seq = 1; refusedAfter < 5; seq++)
                {
                    Assert.True(sw.Elapsed < Deadline, "the old owner was never refused");
                    try
                    {
                        var ts = await tree.SetPropertyAsync("old", node, "seq", B(seq.ToString(System.Globalization.CultureInfo.InvariantCulture)));
                        Assert.Equal(0, refusedAfter); // once refused, never accepted again
                        committed.Add((seq, HlcStamp.Parse(ts!)));
                        if (committed.Count == 3 + round)
                        {
                            enoughWritten.SetResult();
                        }
                    }
                    catch (NotOwnerException e)
                    {
                        Assert.Equal("new", e.Owner);
                        firstRefused = firstRefused == 0 ? seq : firstRefused;
                        refusedAfter++;
                    }
                }
            });
            await enoughWritten.Task.WaitAsync(Deadline);
            var final = new Dictionary<string, byte[]?> { ["seq"] = B("1000"), ["final"] = B("yes") };
            var handoffTs = HlcStamp.Parse((await tree.HandoffAsync("old", "new", node, final))!);
            await writer;

            output.WriteLine($"round {round}: {committed.Count} writes before the handoff at {handoffTs}; first refused seq {firstRefused}");
            Assert.All(committed, c => Assert.True(c.Ts.CompareTo(handoffTs) < 0, $"seq {c.Seq} committed at {c.Ts}, after the handoff at {handoffTs}"));
            Assert.Equal(committed.Count + 1, firstRefused); // every write up to the first refusal committed, in order
            var after = (await tree.GetNodeAsync(node))!;
            Assert.Equal("new", after.Record.Owner);
            Assert.Equal("1000", S(after.Properties["seq"])); // the final value, not overwritten by a late write
            Assert.Equal("yes", S(after.Properties["final"]));

            await tree.SetPropertyAsync("new", node, "seq", B("1001"));
            await Assert.ThrowsAsync<NotOwnerException>(() => tree.HandoffAsync("old", "new", node));
            await Assert.ThrowsAsync<SessionNotFoundException>(() => tree.HandoffAsync("new", "ghost", node));
            Assert.Equal("1001", S((await tree.GetNodeAsync(node))!.Properties["seq"]));
        }
    }

    [Fact]
    public async Task ConcurrentSpawnsOfOneNameHaveExactlyOneWinner()
    {
        var tree = NewTree("race");
        var parent = (await tree.SpawnAsync(SceneTree.Root, NodeSpec.Class("Lobby", "Node") with { Placement = Placement.InRegion(RegionOnShard(3, "lobby")) })).Value.Id;
        for (var round = 0; round < 3; round++)
        {
            var name = $"Host{round}";
            var specs = Enumerable.Range(0, 4).Select(i => NodeSpec.Class(name, "Node") with
            {
                Id = IdOnShard(i),
                Properties = Props(("who", i.ToString(System.Globalization.CultureInfo.InvariantCulture))),
                Children = [NodeSpec.Class("Seat", "Node") with { Id = Guid.NewGuid(), Placement = Placement.InRegion($"seat-{round}-{i}") }],
            }).ToList();
            var outcomes = await Task.WhenAll(specs.Select(s => Task.Run(async () =>
            {
                try
                {
                    await tree.SpawnAsync(parent, s);
                    return "won";
                }
                catch (NameConflictException)
                {
                    return "conflict";
                }
            })));
            output.WriteLine($"round {round}: {string.Join(", ", outcomes)}");
            Assert.Equal(1, outcomes.Count(o => o == "won"));
            Assert.Equal(3, outcomes.Count(o => o == "conflict"));

            var winner = specs[Array.IndexOf(outcomes, "won")];
            var entry = (await tree.ListChildrenAsync(parent)).Single(c => c.Name == name);
            Assert.Equal(winner.Id, entry.Id);
            var keys = await AllKeysAsync(tree);
            foreach (var loser in specs.Where(s => s != winner))
            {
                Assert.DoesNotContain(keys, k => Mentions(k, loser.Id!.Value) || Mentions(k, loser.Children![0].Id!.Value));
            }
        }
    }
}
