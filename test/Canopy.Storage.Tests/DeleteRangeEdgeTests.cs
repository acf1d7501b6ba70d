using static Canopy.Storage.Tests.Bytes;

namespace Canopy.Storage.Tests;

/// <summary>DeleteRange and Scan bounds on both engines: lower bound inclusive, upper exclusive, empty and reversed ranges.</summary>
public sealed class DeleteRangeEdgeTests
{
    private static readonly byte[] Top = [0xFF, 0xFF, 0xFF, 0xFF];

    public static TheoryData<string> Engines => new() { "memory", "rocksdb" };

    [Theory]
    [MemberData(nameof(Engines))]
    public void An_empty_range_deletes_nothing(string kind)
    {
        using var fixture = new EngineFixture(kind);
        var engine = fixture.Engine;
        Seed(engine);

        engine.Write(new WriteBatch().DeleteRange(S("b"), S("b")), sync: false);
        engine.Write(new WriteBatch().DeleteRange([], []), sync: false);

        Assert.Equal(["a", "b", "b\0", "ba", "c", "\u00ff"], Keys(engine));
    }

    [Theory]
    [MemberData(nameof(Engines))]
    public void A_reversed_range_deletes_nothing_and_does_not_fail(string kind)
    {
        using var fixture = new EngineFixture(kind);
        var engine = fixture.Engine;
        Seed(engine);

        engine.Write(new WriteBatch().DeleteRange(S("c"), S("a")).Put(S("d"), S("4")), sync: true);

        Assert.Equal(["a", "b", "b\0", "ba", "c", "d", "\u00ff"], Keys(engine));
    }

    [Theory]
    [MemberData(nameof(Engines))]
    public void The_upper_bound_is_exclusive_and_the_lower_inclusive(string kind)
    {
        using var fixture = new EngineFixture(kind);
        var engine = fixture.Engine;
        Seed(engine);

        engine.Write(new WriteBatch().DeleteRange(S("b"), S("c")), sync: false);

        Assert.Equal(["a", "c", "\u00ff"], Keys(engine));
    }

    [Theory]
    [MemberData(nameof(Engines))]
    public void A_range_to_the_key_just_after_deletes_exactly_one_key(string kind)
    {
        using var fixture = new EngineFixture(kind);
        var engine = fixture.Engine;
        Seed(engine);

        engine.Write(new WriteBatch().DeleteRange(S("b"), S("b\0")), sync: false);

        Assert.Equal(["a", "b\0", "ba", "c", "\u00ff"], Keys(engine));
    }

    [Theory]
    [MemberData(nameof(Engines))]
    public void The_empty_key_is_the_lowest_bound_and_bytes_compare_unsigned(string kind)
    {
        using var fixture = new EngineFixture(kind);
        var engine = fixture.Engine;
        Seed(engine);
        engine.Write(new WriteBatch().Put([], S("empty")).Put([0x7F], S("7f")), sync: false);

        Assert.Equal(S("empty"), engine.Get([]));
        Assert.Equal(["", "a", "b", "b\0", "ba", "c", "\u007f", "\u00ff"], Keys(engine));

        engine.Write(new WriteBatch().DeleteRange([], S("b")), sync: false);
        Assert.Equal(["b", "b\0", "ba", "c", "\u007f", "\u00ff"], Keys(engine));

        engine.Write(new WriteBatch().DeleteRange([0x80], Top), sync: false);
        Assert.Equal(["b", "b\0", "ba", "c", "\u007f"], Keys(engine));
    }

    [Theory]
    [MemberData(nameof(Engines))]
    public void Scan_bounds_match_DeleteRange_bounds(string kind)
    {
        using var fixture = new EngineFixture(kind);
        var engine = fixture.Engine;
        Seed(engine);

        Assert.Equal(["b", "b\0", "ba"], Names(engine.Scan(S("b"), S("c"))));
        Assert.Equal(["b"], Names(engine.Scan(S("b"), S("b\0"))));
        Assert.Empty(engine.Scan(S("b"), S("b")));
        Assert.Empty(engine.Scan(S("c"), S("a")));
        Assert.Empty(engine.Scan([], []));
        Assert.Equal(["\u00ff"], Names(engine.Scan([0x80], Top)));
    }

    [Theory]
    [MemberData(nameof(Engines))]
    public void Later_ops_in_a_batch_see_earlier_ones(string kind)
    {
        using var fixture = new EngineFixture(kind);
        var engine = fixture.Engine;
        Seed(engine);

        engine.Write(new WriteBatch().DeleteRange(S("a"), S("z")).Put(S("b"), S("new")).Delete(S("c")).Put(S("c"), S("again")), sync: false);

        Assert.Equal(["b", "c", "\u00ff"], Keys(engine));
        Assert.Equal(S("new"), engine.Get(S("b")));
        Assert.Equal(S("again"), engine.Get(S("c")));
    }

    private static void Seed(IStorageEngine engine)
    {
        var batch = new WriteBatch();
        foreach (var key in new[] { S("a"), S("b"), S("b\0"), S("ba"), S("c"), [0xFF] })
        {
            batch.Put(key, S("v"));
        }

        engine.Write(batch, sync: true);
    }

    private static List<string> Keys(IStorageEngine engine) => Names(engine.Scan([], Top));

    private static List<string> Names(IEnumerable<KeyValuePair<byte[], byte[]>> entries) =>
        entries.Select(e => new string(e.Key.Select(b => (char)b).ToArray())).ToList();

    private sealed class EngineFixture : IDisposable
    {
        private readonly TempDirectory? _dir;

        public EngineFixture(string kind)
        {
            if (kind == "memory")
            {
                Engine = new MemoryEngine();
            }
            else
            {
                _dir = new TempDirectory();
                Engine = RocksDbEngine.Open(_dir.Path);
            }
        }

        public IStorageEngine Engine { get; }

        public void Dispose()
        {
            Engine.Dispose();
            _dir?.Dispose();
        }
    }
}
