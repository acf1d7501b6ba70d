using static Canopy.Storage.Tests.Bytes;

namespace Canopy.Storage.Tests;

public sealed class ByteArrayComparerTests
{
    private static readonly ByteArrayComparer Comparer = ByteArrayComparer.Instance;

    [Fact]
    public void Orders_lexicographically_by_unsigned_bytes_with_prefixes_first()
    {
        byte[][] sorted = [[], [0x00], [0x00, 0x00], [0x00, 0xFF], [0x01], [0x7F], [0x7F, 0x00], [0x80], [0xFF], [0xFF, 0xFF]];
        for (var i = 0; i < sorted.Length; i++)
        {
            for (var j = 0; j < sorted.Length; j++)
            {
                Assert.Equal(i.CompareTo(j), Comparer.Compare(sorted[i], sorted[j]));
                Assert.Equal(NaiveCompare(sorted[i], sorted[j]), ByteArrayComparer.CompareBytes(sorted[i], sorted[j]));
            }
        }
    }

    [Fact]
    public void Null_sorts_first_and_equals_only_null()
    {
        Assert.True(Comparer.Compare(null, []) < 0);
        Assert.True(Comparer.Compare([], null) > 0);
        Assert.Equal(0, Comparer.Compare(null, null));
        Assert.True(Comparer.Equals(null, null));
        Assert.False(Comparer.Equals(null, []));
    }

    [Fact]
    public void Equality_and_hash_are_by_content_and_fixed()
    {
        Assert.True(Comparer.Equals(B(1, 2, 3), B(1, 2, 3)));
        Assert.False(Comparer.Equals(B(1, 2, 3), B(1, 2)));
        Assert.Equal(Comparer.GetHashCode(B(1, 2, 3)), Comparer.GetHashCode(B(1, 2, 3)));
        Assert.Equal(unchecked((int)2166136261u), Comparer.GetHashCode([])); // FNV-1a offset basis: the same in every process.
        Assert.Equal(unchecked((int)0xE40C292Cu), Comparer.GetHashCode(S("a")));
    }
}
