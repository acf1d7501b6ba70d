namespace Canopy.Storage;

/// <summary>
/// Orders byte arrays the way every storage engine orders keys: lexicographically by unsigned byte value,
/// a proper prefix before its extensions (RocksDB's default bytewise comparator). Equality is by content and
/// the hash code is a fixed function of the content (the same in every process and run), so structures keyed
/// by it behave deterministically. <c>null</c> sorts before every array.
/// </summary>
public sealed class ByteArrayComparer : IComparer<byte[]>, IEqualityComparer<byte[]>
{
    /// <summary>The single instance; the comparer has no state.</summary>
    public static ByteArrayComparer Instance { get; } = new();

    private ByteArrayComparer()
    {
    }

    /// <summary>Negative, zero or positive as <paramref name="x"/> sorts before, equal to or after <paramref name="y"/>.</summary>
    public static int CompareBytes(ReadOnlySpan<byte> x, ReadOnlySpan<byte> y) => Math.Sign(x.SequenceCompareTo(y));

    /// <inheritdoc/>
    public int Compare(byte[]? x, byte[]? y)
    {
        if (ReferenceEquals(x, y))
        {
            return 0;
        }

        if (x is null)
        {
            return -1;
        }

        if (y is null)
        {
            return 1;
        }

        return CompareBytes(x, y);
    }

    /// <inheritdoc/>
    public bool Equals(byte[]? x, byte[]? y)
    {
        if (ReferenceEquals(x, y))
        {
            return true;
        }

        if (x is null || y is null)
        {
            return false;
        }

        return x.AsSpan().SequenceEqual(y);
    }

    /// <summary>A deterministic content hash (FNV-1a, 32 bit): equal for equal content in every process.</summary>
    public int GetHashCode(byte[] obj)
    {
        ArgumentNullException.ThrowIfNull(obj);
        var hash = 2166136261u;
        foreach (var b in obj)
        {
            hash = unchecked((hash ^ b) * 16777619u);
        }

        return unchecked((int)hash);
    }
}
