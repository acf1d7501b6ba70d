namespace Canopy.Storage;

/// <summary>
/// An ordered, byte-keyed storage engine holding every range of one server (DESIGN §4).
///
/// Durability contract (the same for every implementation, so the simulation's crash model is real):
/// - <see cref="Write"/> applies a batch atomically and in order; later reads see it at once.
/// - A write is durable once a <c>sync: true</c> write or a <see cref="Sync"/> that began after it has returned.
///   Syncing makes every earlier write durable too (one ordered write-ahead log, as in RocksDB).
/// - A crash loses an arbitrary suffix of the writes that were not yet durable, never a prefix
///   and never part of a batch.
/// </summary>
public interface IStorageEngine : IDisposable
{
    /// <summary>Applies the batch atomically. With <paramref name="sync"/> it is durable when this returns.</summary>
    void Write(WriteBatch batch, bool sync);

    /// <summary>Makes every write that returned before this call durable.</summary>
    void Sync();

    /// <summary>The current value of <paramref name="key"/>, or null.</summary>
    byte[]? Get(ReadOnlySpan<byte> key);

    /// <summary>Every key in [<paramref name="lower"/>, <paramref name="upper"/>) in ascending byte order, with its value.</summary>
    IEnumerable<KeyValuePair<byte[], byte[]>> Scan(byte[] lower, byte[] upper);
}

/// <summary>An ordered list of writes applied atomically by <see cref="IStorageEngine.Write"/>. Engine-neutral.</summary>
public sealed class WriteBatch
{
    private readonly List<Op> _ops = [];

    public enum OpKind : byte
    {
        Put,
        Delete,

        /// <summary>Deletes every key in [Key, Value).</summary>
        DeleteRange,
    }

    public readonly record struct Op(OpKind Kind, byte[] Key, byte[]? Value);

    public IReadOnlyList<Op> Ops => _ops;

    public int Count => _ops.Count;

    /// <summary>Bytes of keys and values in the batch.</summary>
    public long ByteSize { get; private set; }

    public bool IsEmpty => _ops.Count == 0;

    public WriteBatch Put(byte[] key, byte[] value)
    {
        _ops.Add(new Op(OpKind.Put, key, value));
        ByteSize += key.Length + value.Length;
        return this;
    }

    public WriteBatch Delete(byte[] key)
    {
        _ops.Add(new Op(OpKind.Delete, key, null));
        ByteSize += key.Length;
        return this;
    }

    /// <summary>Deletes every key in [<paramref name="start"/>, <paramref name="end"/>).</summary>
    public WriteBatch DeleteRange(byte[] start, byte[] end)
    {
        _ops.Add(new Op(OpKind.DeleteRange, start, end));
        ByteSize += start.Length + end.Length;
        return this;
    }

    /// <summary>Appends every op of <paramref name="other"/> to this batch.</summary>
    public WriteBatch Append(WriteBatch other)
    {
        _ops.AddRange(other._ops);
        ByteSize += other.ByteSize;
        return this;
    }

    public void Clear()
    {
        _ops.Clear();
        ByteSize = 0;
    }
}
