namespace Canopy.Storage;

/// <summary>
/// Tuning for <see cref="RocksDbEngine"/>. The defaults suit one server on a small (2-core) machine; every value
/// is validated when the engine opens.
/// </summary>
public sealed record RocksDbEngineOptions
{
    /// <summary>The defaults.</summary>
    public static RocksDbEngineOptions Default { get; } = new();

    /// <summary>
    /// Capacity of the block cache. One LRU cache is shared by every engine in the process; its capacity is the
    /// largest value any open engine asked for.
    /// </summary>
    public long BlockCacheBytes { get; init; } = 64L * 1024 * 1024;

    /// <summary>Background flush and compaction threads (RocksDB <c>max_background_jobs</c>).</summary>
    public int MaxBackgroundJobs { get; init; } = 2;

    /// <summary>Bloom filter bits per key, for point lookups (10 ≈ 1% false positives). 0 disables the filter.</summary>
    public int BloomBitsPerKey { get; init; } = 10;

    /// <summary>Size of one memtable (RocksDB <c>write_buffer_size</c>).</summary>
    public long WriteBufferBytes { get; init; } = 32L * 1024 * 1024;

    /// <summary>Compress SST blocks with LZ4 when the native library supports it (otherwise no compression).</summary>
    public bool Compression { get; init; } = true;

    internal void Validate()
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(BlockCacheBytes);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(MaxBackgroundJobs);
        ArgumentOutOfRangeException.ThrowIfNegative(BloomBitsPerKey);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(WriteBufferBytes);
    }
}
