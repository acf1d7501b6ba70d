using Canopy.Rpc;

namespace Canopy.Client.Tests;

public sealed class RangeCacheTests
{
    private static RangeInfo R(ulong id, string start, string? end, ulong leaseholder = 1, ulong term = 1) => new()
    {
        RangeId = id,
        StartKey = Bytes.Of(start),
        EndKey = end is null ? null : Bytes.Of(end),
        Leaseholder = leaseholder,
        Term = term,
    };

    [Fact]
    public void Finds_the_range_containing_a_key()
    {
        var cache = new RangeCache();
        cache.Learn(R(2, "m", null));
        cache.Learn(R(1, "", "g"));
        Assert.Equal(1UL, cache.Find(Bytes.Of("a"))!.RangeId);
        Assert.Equal(1UL, cache.Find([])!.RangeId);
        Assert.Null(cache.Find(Bytes.Of("g")));
        Assert.Equal(2UL, cache.Find(Bytes.Of("m"))!.RangeId);
        Assert.Equal(2UL, cache.Find(Bytes.Of("zzz"))!.RangeId);
        Assert.Equal([1UL, 2UL], cache.Snapshot.Select(r => r.RangeId));
    }

    [Fact]
    public void A_new_range_evicts_the_ones_it_overlaps()
    {
        var cache = new RangeCache();
        cache.Learn(R(1, "", "g"));
        cache.Learn(R(2, "g", "p"));
        cache.Learn(R(3, "p", null));
        cache.Learn(R(4, "f", "q"));
        Assert.Equal([4UL], cache.Snapshot.Select(r => r.RangeId));
        cache.Learn(R(5, "a", "f"));
        Assert.Equal([5UL, 4UL], cache.Snapshot.Select(r => r.RangeId));
    }

    [Fact]
    public void An_older_view_of_the_same_range_is_ignored_and_hints_apply()
    {
        var cache = new RangeCache();
        cache.Learn(R(1, "", null, leaseholder: 2, term: 5));
        cache.Learn(R(1, "", null, leaseholder: 1, term: 4));
        Assert.Equal(2UL, cache.Find(Bytes.Of("k"))!.Leaseholder);
        cache.Learn(R(1, "", null, leaseholder: 3, term: 6));
        Assert.Equal(3UL, cache.Find(Bytes.Of("k"))!.Leaseholder);

        cache.SetLeaseholder(Bytes.Of("k"), 1, "h:1");
        Assert.Equal("h:1", cache.Find(Bytes.Of("k"))!.LeaseholderAddress);
        cache.ClearLeaseholders(r => r.LeaseholderAddress == "h:1");
        Assert.Equal(0UL, cache.Find(Bytes.Of("k"))!.Leaseholder);
        cache.Remove(cache.Find(Bytes.Of("k"))!);
        Assert.Empty(cache.Snapshot);
    }

    [Fact]
    public void Key_formatting_is_text_when_printable_else_hex()
    {
        Assert.Equal("user/1", CanopyKeys.Format(Bytes.Of("user/1")));
        Assert.Equal("0x00ff", CanopyKeys.Format([0x00, 0xff]));
        Assert.Equal("0x0a", CanopyKeys.Format([0x0a]));
        Assert.Equal(CanopyKeys.Hex(Bytes.Of("0x12")), CanopyKeys.Format(Bytes.Of("0x12")));
        Assert.Equal("", CanopyKeys.Format([]));
        Assert.NotNull(CanopyKeys.Validate([]));
        Assert.NotNull(CanopyKeys.Validate([0]));
        Assert.NotNull(CanopyKeys.Validate(new byte[4097]));
        Assert.Null(CanopyKeys.Validate(Bytes.Of("ok")));
    }
}
