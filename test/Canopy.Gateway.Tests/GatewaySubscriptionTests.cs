// Subscriptions over the gateway against a real server (docs/protocol.md, "Subscriptions").
using Canopy.Variant;

namespace Canopy.Gateway.Tests;

public sealed class GatewaySubscriptionTests(GatewayFixture fx) : IClassFixture<GatewayFixture>
{
    private static string UniqueTree() => $"gw-sub-{Guid.NewGuid():N}";

    private static VariantDictionary Props(params (string Key, GodotVariant Value)[] entries) =>
        new([.. entries.Select(e => ((GodotVariant)e.Key, e.Value))]);

    private static void AssertOk(VariantDictionary r) => Assert.True(r.Str("op") == "result", $"{r.Str("code")}: {r.Str("message")}");

    private static async Task<string> SpawnAsync(WsClient c, string tree, string parent, string name, VariantDictionary? props = null)
    {
        var r = await c.CallAsync("tree_spawn", ("tree", tree), ("parent", parent), ("name", name), ("type", "Node3D"), ("props", props ?? Props()));
        AssertOk(r);
        return r.Str("node")!;
    }

    /// <summary>Receives sub_batch messages until <paramref name="done"/> says so; checks resolved only grows.</summary>
    private static async Task<List<VariantDictionary>> ReadBatchesUntilAsync(WsClient c, Func<List<VariantDictionary>, bool> done)
    {
        var batches = new List<VariantDictionary>();
        string? last = null;
        while (!done(batches))
        {
            var m = await c.ReceiveAsync() ?? throw new InvalidOperationException("closed");
            Assert.Equal("sub_batch", m.Str("op"));
            var resolved = m.Str("resolved")!;
            if (last is not null)
            {
                Assert.True(Ts(resolved).CompareTo(Ts(last)) > 0, $"resolved {resolved} after {last}");
            }

            last = resolved;
            batches.Add(m);
        }

        return batches;
    }

    private static (long, long) Ts(string s)
    {
        var p = s.Split('.');
        return (long.Parse(p[0], System.Globalization.CultureInfo.InvariantCulture), long.Parse(p[1], System.Globalization.CultureInfo.InvariantCulture));
    }

    private static IEnumerable<VariantDictionary> Events(IEnumerable<VariantDictionary> batches) =>
        batches.SelectMany(b => ((VariantArray)b["events"]).Items.Cast<VariantDictionary>());

    private static long? Seq(VariantDictionary ev) =>
        ev.TryGetValue("props", out var p) && p is VariantDictionary d && d.TryGetValue("seq", out var s) && s is VariantInt i ? i.Value : null;

    [Fact]
    public async Task Subscribe_snapshot_then_spawn_updates_in_order_free_and_resume()
    {
        await using var writer = await fx.ConnectAsync();
        await using var reader = await fx.ConnectAsync();
        var tree = UniqueTree();
        var world = await SpawnAsync(writer, tree, "/", "World");

        var sub = await reader.CallAsync("subscribe", ("tree", tree), ("node", "/World"));
        AssertOk(sub);
        var subId = sub.Int("sub");
        var snapshot = ((VariantArray)sub["nodes"]).Items.Cast<VariantDictionary>().ToList();
        Assert.Equal([world], snapshot.Select(n => n.Str("id")));

        var player = await SpawnAsync(writer, tree, "/World", "Player", Props(("seq", 0L)));
        for (var i = 1; i <= 5; i++)
        {
            AssertOk(await writer.CallAsync("tree_set", ("tree", tree), ("node", player), ("props", Props(("seq", (long)i)))));
        }

        var batches = await ReadBatchesUntilAsync(reader, bs => Events(bs).Any(e => Seq(e) == 5));
        Assert.All(batches, b => Assert.Equal(subId, b.Int("sub")));
        var events = Events(batches).ToList();
        Assert.Equal("enter", events[0].Str("event"));
        Assert.Equal(player, events[0].Str("node"));
        Assert.Equal("Player", events[0].Str("name"));
        Assert.Equal(world, events[0].Str("parent"));
        Assert.Equal(Enumerable.Range(0, 6).Select(i => (long?)i), events.Select(Seq));
        Assert.All(events.Skip(1), e => Assert.Equal("update", e.Str("event")));
        var resolved = batches[^1].Str("resolved")!;

        // Free: a leave. Then unsubscribe.
        AssertOk(await writer.CallAsync("tree_free", ("tree", tree), ("node", player)));
        var freed = await ReadBatchesUntilAsync(reader, bs => Events(bs).Any(e => e.Str("event") == "leave"));
        Assert.Equal(player, Events(freed).Single(e => e.Str("event") == "leave").Str("node"));
        AssertOk(await reader.CallAsync("unsubscribe", ("sub", subId!.Value)));

        // Resume from the resolved timestamp before the free, on a new connection: the free again, nothing before it.
        await using var again = await fx.ConnectAsync();
        var resumed = await again.CallAsync("subscribe", ("tree", tree), ("node", "/World"), ("from_ts", resolved));
        AssertOk(resumed);
        Assert.False(resumed.TryGetValue("nodes", out _));
        var replay = await ReadBatchesUntilAsync(again, bs => Events(bs).Any());
        var replayed = Events(replay).ToList();
        Assert.Equal([("leave", player)], replayed.Select(e => (e.Str("event"), e.Str("node"))));
    }

    [Fact]
    public async Task Subscription_errors_are_typed_and_the_connection_stays_usable()
    {
        await using var c = await fx.ConnectAsync();
        var tree = UniqueTree();
        Assert.Equal("not_found", (await c.CallAsync("subscribe", ("tree", tree), ("node", "/Nope"))).Str("code"));
        Assert.Equal("bad_request", (await c.CallAsync("subscribe", ("tree", tree), ("node", "/"), ("region", "r1"))).Str("code"));
        Assert.Equal("bad_request", (await c.CallAsync("subscribe", ("tree", tree), ("from_ts", "yesterday"))).Str("code"));
        Assert.Equal("bad_request", (await c.CallAsync("subscribe", ("tree", ""))).Str("code"));
        Assert.Equal("not_found", (await c.CallAsync("unsubscribe", ("sub", 12345L))).Str("code"));
        Assert.Equal("result", (await c.CallAsync("ping")).Str("op"));
    }

    [Fact]
    public async Task Region_subscription_sees_a_node_move_in_and_out()
    {
        await using var writer = await fx.ConnectAsync();
        await using var reader = await fx.ConnectAsync();
        var tree = UniqueTree();
        var sub = await reader.CallAsync("subscribe", ("tree", tree), ("regions", new VariantArray("cell:1", "cell:2")));
        AssertOk(sub);
        Assert.Empty((VariantArray)sub["nodes"]);
        var r = await writer.CallAsync("tree_spawn", ("tree", tree), ("parent", "/"), ("name", "Walker"), ("type", "Node3D"), ("region", "cell:1"), ("props", Props(("seq", 1L))));
        AssertOk(r);
        var walker = r.Str("node")!;
        var batches = await ReadBatchesUntilAsync(reader, bs => Events(bs).Any());
        var enter = Events(batches).Single();
        Assert.Equal(("enter", walker, "cell:1"), (enter.Str("event"), enter.Str("node"), enter.Str("region")));

        // tree_move into the other watched region: an update with the new region (never a leave); then out of both: a leave.
        var moved = await writer.CallAsync("tree_move", ("tree", tree), ("node", walker), ("region", "cell:2"));
        AssertOk(moved);
        Assert.Equal(1, moved.Int("moved"));
        var update = Events(await ReadBatchesUntilAsync(reader, bs => Events(bs).Any())).Single();
        Assert.Equal(("update", "cell:2"), (update.Str("event"), update.Str("region")));
        Assert.Null(Seq(update)); // the move re-keys the properties without changing them: not reported as changes
        AssertOk(await writer.CallAsync("tree_move", ("tree", tree), ("node", walker), ("region", "cell:3")));
        var left = Events(await ReadBatchesUntilAsync(reader, bs => Events(bs).Any())).Single();
        Assert.Equal(("leave", walker), (left.Str("event"), left.Str("node")));
        Assert.Equal("bad_request", (await writer.CallAsync("tree_move", ("tree", tree), ("node", walker), ("subtree", "yes"))).Str("code"));
    }

    [Fact]
    public async Task Tree_set_many_writes_every_node_in_one_transaction_and_checks_ownership()
    {
        await using var c = await fx.ConnectAsync();
        var tree = UniqueTree();
        var a = await SpawnAsync(c, tree, "/", "A");
        var b = await SpawnAsync(c, tree, "/", "B");
        AssertOk(await c.CallAsync("session_open", ("tree", tree), ("session", "s1")));
        AssertOk(await c.CallAsync("own_take", ("tree", tree), ("session", "s1"), ("nodes", new VariantArray(a, b))));
        var nodes = new VariantDictionary((a, Props(("hp", 1L))), (b, Props(("hp", 2L))));
        var r = await c.CallAsync("tree_set_many", ("tree", tree), ("session", "s1"), ("nodes", nodes), ("regions", new VariantDictionary((a, GodotVariant.Nil))));
        AssertOk(r);
        Assert.Equal(2, r.Int("count"));
        var read = await c.CallAsync("tree_read", ("tree", tree), ("node", "/"));
        var hp = ((VariantArray)read["nodes"]).Items.Cast<VariantDictionary>().Where(n => n.Str("name") is "A" or "B")
            .ToDictionary(n => n.Str("name")!, n => ((VariantDictionary)n["props"]).Int("hp"));
        Assert.Equal(1, hp["A"]);
        Assert.Equal(2, hp["B"]);

        // Without the owner's session: refused, nothing written.
        var refused = await c.CallAsync("tree_set_many", ("tree", tree), ("nodes", new VariantDictionary((a, Props(("hp", 9L))), (b, Props(("hp", 9L))))));
        Assert.Equal("not_owner", refused.Str("code"));
        var bad = await c.CallAsync("tree_set_many", ("tree", tree), ("nodes", new VariantDictionary(("not-a-uuid", Props()))));
        Assert.Equal("bad_request", bad.Str("code"));
    }
}
