// Tree ops over the gateway against a real server (docs/protocol.md, "Scene tree").
using Canopy.Variant;

namespace Canopy.Gateway.Tests;

public sealed class GatewayTreeTests(GatewayFixture fx) : IClassFixture<GatewayFixture>
{
    private static string UniqueTree() => $"gw-tree-{Guid.NewGuid():N}";

    private static VariantDictionary Props(params (string Key, GodotVariant Value)[] entries) =>
        new([.. entries.Select(e => ((GodotVariant)e.Key, e.Value))]);

    private static async Task<string> SpawnAsync(WsClient c, string tree, string parent, string name, VariantDictionary? props = null)
    {
        var r = await c.CallAsync("tree_spawn", ("tree", tree), ("parent", parent), ("name", name), ("type", "Node3D"), ("props", props ?? Props()));
        Assert.True(r.Str("op") == "result", $"spawn {name}: {r.Str("code")} {r.Str("message")}");
        Assert.False(string.IsNullOrEmpty(r.Str("ts")));
        var id = r.Str("node")!;
        Assert.True(Guid.TryParse(id, out _));
        return id;
    }

    private static void AssertOk(VariantDictionary r) => Assert.True(r.Str("op") == "result", $"{r.Str("code")}: {r.Str("message")}");

    private static List<VariantDictionary> Nodes(VariantDictionary read)
    {
        AssertOk(read);
        Assert.True(read.TryGetValue("nodes", out var n) && n is VariantArray);
        return [.. ((VariantArray)n).Items.Cast<VariantDictionary>()];
    }

    private static VariantDictionary PropsOf(VariantDictionary node) => (VariantDictionary)node["props"];

    [Fact]
    public async Task Spawn_read_set_with_variant_round_trip()
    {
        await using var c = await fx.ConnectAsync();
        var tree = UniqueTree();
        var nested = Props(("hp", 10), ("tags", new VariantArray("a", "b")));
        var sent = Props(("i", 42L), ("f", 1.5), ("s", "hello"), ("v", new Vector3(1, 2, 3)), ("d", nested));
        var world = await SpawnAsync(c, tree, "/", "World", sent);
        var player = await SpawnAsync(c, tree, world, "Player", Props(("speed", 2.5)));
        var byPath = await SpawnAsync(c, tree, "/World/Player", "Camera");

        var nodes = Nodes(await c.CallAsync("tree_read", ("tree", tree), ("node", "/World")));
        Assert.Equal(3, nodes.Count);
        var w = nodes.Single(n => n.Str("id") == world);
        Assert.Equal("World", w.Str("name"));
        Assert.Equal("Node3D", w.Str("type"));
        Assert.Equal(Guid.Empty.ToString(), w.Str("parent"));
        Assert.True(w.TryGetValue("owner", out var owner) && owner is VariantNil);
        var got = PropsOf(w);
        Assert.Equal(sent.Count, got.Count);
        foreach (var (k, v) in sent.Entries)
        {
            Assert.Equal(v, got[k]);
        }

        Assert.Equal(world, nodes.Single(n => n.Str("id") == player).Str("parent"));
        Assert.Equal(player, nodes.Single(n => n.Str("id") == byPath).Str("parent"));

        // depth 0: the node alone; read by UUID.
        Assert.Single(Nodes(await c.CallAsync("tree_read", ("tree", tree), ("node", world), ("depth", 0))));

        // Set: a new value, a new property, a nil deletes.
        AssertOk(await c.CallAsync("tree_set", ("tree", tree), ("node", "/World"), ("props", Props(("i", 7L), ("extra", "x"), ("s", GodotVariant.Nil)))));
        var after = PropsOf(Nodes(await c.CallAsync("tree_read", ("tree", tree), ("node", world), ("depth", 0)))[0]);
        Assert.Equal(new VariantInt(7), after["i"]);
        Assert.Equal(new VariantString("x"), after["extra"]);
        Assert.False(after.TryGetValue("s", out _));
        Assert.Equal(new VariantVector3(new Vector3(1, 2, 3)), after["v"]);
    }

    [Fact]
    public async Task Duplicate_sibling_name_is_name_taken_and_free_removes_the_subtree()
    {
        await using var c = await fx.ConnectAsync();
        var tree = UniqueTree();
        var a = await SpawnAsync(c, tree, "/", "A");
        await SpawnAsync(c, tree, a, "Child");

        var dup = await c.CallAsync("tree_spawn", ("tree", tree), ("parent", "/"), ("name", "A"), ("type", "Node"));
        Assert.Equal("name_taken", dup.Str("code"));
        Assert.Equal(a, dup.Str("existing"));

        var free = await c.CallAsync("tree_free", ("tree", tree), ("node", "/A"));
        AssertOk(free);
        Assert.Equal(2, free.Int("freed"));
        Assert.Equal("not_found", (await c.CallAsync("tree_read", ("tree", tree), ("node", a))).Str("code"));
        Assert.Equal("not_found", (await c.CallAsync("tree_read", ("tree", tree), ("node", "/A/Child"))).Str("code"));
        Assert.Single(Nodes(await c.CallAsync("tree_read", ("tree", tree), ("node", "/")))); // the root alone

        // The name is free again.
        await SpawnAsync(c, tree, "/", "A");
    }

    [Fact]
    public async Task Owned_node_refuses_other_writers_until_handed_off()
    {
        await using var a = await fx.ConnectAsync();
        await using var b = await fx.ConnectAsync();
        var tree = UniqueTree();
        var node = await SpawnAsync(a, tree, "/", "Ship", Props(("x", 0L)));

        AssertOk(await a.CallAsync("session_open", ("tree", tree), ("session", "sa"), ("lease_ms", 60_000)));
        AssertOk(await b.CallAsync("session_open", ("tree", tree), ("session", "sb"), ("lease_ms", 60_000)));
        AssertOk(await a.CallAsync("session_renew", ("tree", tree), ("session", "sa")));
        AssertOk(await a.CallAsync("own_take", ("tree", tree), ("session", "sa"), ("nodes", new VariantArray(node))));

        var refused = await b.CallAsync("tree_set", ("tree", tree), ("session", "sb"), ("node", node), ("props", Props(("x", 1L))));
        Assert.Equal("not_owner", refused.Str("code"));
        Assert.Equal("sa", refused.Str("owner"));
        var anonymous = await b.CallAsync("tree_set", ("tree", tree), ("node", "/Ship"), ("props", Props(("x", 1L))));
        Assert.Equal("not_owner", anonymous.Str("code"));

        // b cannot take it from a live lease either, nor hand it over in a's name from the wrong session.
        Assert.Equal("not_owner", (await b.CallAsync("own_take", ("tree", tree), ("session", "sb"), ("nodes", new VariantArray("/Ship")))).Str("code"));
        Assert.Equal("not_owner", (await b.CallAsync("own_handoff", ("tree", tree), ("from", "sb"), ("to", "sb"), ("node", node))).Str("code"));

        AssertOk(await a.CallAsync("tree_set", ("tree", tree), ("session", "sa"), ("node", node), ("props", Props(("x", 2L)))));
        AssertOk(await a.CallAsync("own_handoff", ("tree", tree), ("from", "sa"), ("to", "sb"), ("node", node), ("props", Props(("x", 3L)))));
        var handed = Nodes(await b.CallAsync("tree_read", ("tree", tree), ("node", node)))[0];
        Assert.Equal("sb", handed.Str("owner"));
        Assert.Equal(new VariantInt(3), PropsOf(handed)["x"]);

        AssertOk(await b.CallAsync("tree_set", ("tree", tree), ("session", "sb"), ("node", node), ("props", Props(("x", 4L)))));
        var old = await a.CallAsync("tree_set", ("tree", tree), ("session", "sa"), ("node", node), ("props", Props(("x", 5L))));
        Assert.Equal("not_owner", old.Str("code"));
        Assert.Equal("sb", old.Str("owner"));
        Assert.Equal(new VariantInt(4), PropsOf(Nodes(await a.CallAsync("tree_read", ("tree", tree), ("node", node)))[0])["x"]);
    }

    [Fact]
    public async Task Bad_tree_requests_are_typed_errors()
    {
        await using var c = await fx.ConnectAsync();
        var tree = UniqueTree();
        Assert.Equal("bad_request", (await c.CallAsync("tree_spawn", ("tree", tree), ("parent", "/"), ("type", "Node"))).Str("code")); // no name
        Assert.Equal("bad_request", (await c.CallAsync("tree_set", ("tree", tree), ("node", "/"), ("props", "not a dictionary"))).Str("code"));
        Assert.Equal("bad_request", (await c.CallAsync("tree_read", ("tree", 5), ("node", "/"))).Str("code"));
        Assert.Equal("not_found", (await c.CallAsync("tree_spawn", ("tree", tree), ("parent", "/Nowhere"), ("name", "x"), ("type", "Node"))).Str("code"));
        Assert.Equal("not_found", (await c.CallAsync("session_renew", ("tree", tree), ("session", "never-opened"))).Str("code"));
        Assert.Equal("result", (await c.CallAsync("ping")).Str("op"));
    }
}
