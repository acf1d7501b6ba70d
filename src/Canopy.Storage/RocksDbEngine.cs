using RocksDbSharp;
using NativeBatch = RocksDbSharp.WriteBatch;

namespace Canopy.Storage;

/// <summary>
/// The on-disk <see cref="IStorageEngine"/>: one RocksDB database in one directory, with the interface's durability
/// contract (a <c>sync: true</c> write or <see cref="Sync"/> fsyncs the write-ahead log, which is ordered; WAL
/// recovery is point-in-time, so a crash loses at most a suffix of unsynced batches and never part of one).
///
/// Guarantees:
/// - <see cref="Open"/> creates the directory if missing and holds RocksDB's <c>LOCK</c> on it until disposed; a
///   directory already open elsewhere gives <see cref="StoreInUseException"/>, any other failure
///   <see cref="CanopyStorageException"/> with a one-line message naming the directory.
/// - Reads, writes and syncs that fail in RocksDB throw <see cref="CanopyStorageException"/>.
/// - Values returned by <see cref="Get"/> and <see cref="Scan"/> are fresh copies. A scan reads a consistent snapshot
///   taken when its enumeration starts.
/// - Thread-safe. <see cref="Dispose"/> syncs the WAL (a clean shutdown loses nothing) and closes the database once
///   every call and scan in progress has finished; later calls throw <see cref="ObjectDisposedException"/>.
/// </summary>
public sealed class RocksDbEngine : IStorageEngine
{
    private static readonly Lock SharedCacheLock = new();
    private static Cache? s_sharedCache;
    private static long s_sharedCacheBytes;

    private readonly RocksDb _db;
    private readonly WriteOptions _syncWrite = new WriteOptions().SetSync(true);
    private readonly WriteOptions _asyncWrite = new WriteOptions().SetSync(false);

    // RocksDB copies its options at open, but the binding's option objects free native memory in finalizers:
    // keep them reachable for the life of the database to be safe.
    private readonly DbOptions _dbOptions;
    private readonly BlockBasedTableOptions _tableOptions;

    /// <summary>1 for the owner (released by Dispose) plus 1 per call or scan in progress; the database closes at 0.</summary>
    private int _references = 1;
    private int _disposed;

    private RocksDbEngine(RocksDb db, string storeDirectory, DbOptions dbOptions, BlockBasedTableOptions tableOptions, bool lz4)
    {
        _db = db;
        StoreDirectory = storeDirectory;
        _dbOptions = dbOptions;
        _tableOptions = tableOptions;
        UsesLz4Compression = lz4;
    }

    /// <summary>The full path of the store directory.</summary>
    public string StoreDirectory { get; }

    /// <summary>True when SST blocks are LZ4-compressed; false when compression is off or LZ4 is not in the native library.</summary>
    public bool UsesLz4Compression { get; }

    /// <summary>
    /// Opens (creating if missing) the store in <paramref name="directory"/>.
    /// </summary>
    /// <exception cref="StoreInUseException">Another process or engine instance has the directory open.</exception>
    /// <exception cref="CanopyStorageException">The directory cannot be created, or RocksDB cannot open it.</exception>
    public static RocksDbEngine Open(string directory, RocksDbEngineOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        options ??= RocksDbEngineOptions.Default;
        options.Validate();

        string fullPath;
        try
        {
            fullPath = Path.GetFullPath(directory);
            Directory.CreateDirectory(fullPath);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new CanopyStorageException($"cannot create store directory {directory}: {e.Message}", e);
        }

        var lz4 = options.Compression;
        while (true)
        {
            try
            {
                var tableOptions = BuildTableOptions(options);
                var dbOptions = BuildDbOptions(options, tableOptions, lz4);
                var db = RocksDb.Open(dbOptions, fullPath);
                return new RocksDbEngine(db, fullPath, dbOptions, tableOptions, lz4);
            }
            catch (RocksDbSharpException e) when (lz4 && IsCompressionUnsupported(e.Message))
            {
                lz4 = false; // The native library lacks LZ4: run uncompressed rather than not at all.
            }
            catch (RocksDbSharpException e)
            {
                throw MapOpenFailure(fullPath, e);
            }
            catch (Exception e) when (e is not CanopyStorageException)
            {
                // E.g. the native library failed to load (DllNotFoundException, TypeInitializationException).
                throw new CanopyStorageException($"cannot open store directory {fullPath}: {e.GetType().Name}: {e.Message}", e);
            }
        }
    }

    /// <inheritdoc/>
    public void Write(WriteBatch batch, bool sync)
    {
        WriteBatchChecks.Validate(batch);
        if (batch.IsEmpty)
        {
            if (sync)
            {
                Sync();
            }
            else
            {
                ThrowIfDisposed();
            }

            return;
        }

        using var native = new NativeBatch();
        foreach (var op in batch.Ops)
        {
            switch (op.Kind)
            {
                case WriteBatch.OpKind.Put:
                    native.Put(op.Key, op.Value!);
                    break;
                case WriteBatch.OpKind.Delete:
                    native.Delete(op.Key);
                    break;
                case WriteBatch.OpKind.DeleteRange:
                    // RocksDB rejects end < start ("end key comes before start key"); such a range is empty anyway.
                    if (!WriteBatchChecks.IsEmptyRange(op.Key, op.Value!))
                    {
                        native.DeleteRange(op.Key, (ulong)op.Key.Length, op.Value!, (ulong)op.Value!.Length);
                    }

                    break;
                default:
                    throw new InvalidOperationException($"unknown op kind {op.Kind}"); // Validate rejects these first.
            }
        }

        Acquire();
        try
        {
            _db.Write(native, sync ? _syncWrite : _asyncWrite);
        }
        catch (RocksDbSharpException e)
        {
            throw Failure(sync ? "synced write" : "write", e);
        }
        finally
        {
            Release();
        }
    }

    /// <inheritdoc/>
    public void Sync()
    {
        Acquire();
        try
        {
            SyncWal();
        }
        finally
        {
            Release();
        }
    }

    /// <inheritdoc/>
    public byte[]? Get(ReadOnlySpan<byte> key)
    {
        Acquire();
        try
        {
            return _db.Get(key);
        }
        catch (RocksDbSharpException e)
        {
            throw Failure("read", e);
        }
        finally
        {
            Release();
        }
    }

    /// <inheritdoc/>
    public IEnumerable<KeyValuePair<byte[], byte[]>> Scan(byte[] lower, byte[] upper)
    {
        ArgumentNullException.ThrowIfNull(lower);
        ArgumentNullException.ThrowIfNull(upper);
        ThrowIfDisposed();
        return WriteBatchChecks.IsEmptyRange(lower, upper) ? [] : ScanFrom((byte[])lower.Clone(), (byte[])upper.Clone());
    }

    /// <summary>
    /// Syncs the WAL (so a clean shutdown loses nothing) and closes the database, at once or, if calls or scans are
    /// still running, when the last of them finishes. Throws <see cref="CanopyStorageException"/> if the final sync fails
    /// (the database is closed all the same).
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        try
        {
            SyncWal();
        }
        finally
        {
            Release();
        }
    }

    internal static bool IsCompressionUnsupported(string message) =>
        message.Contains("Compression type", StringComparison.OrdinalIgnoreCase)
        && message.Contains("not linked", StringComparison.OrdinalIgnoreCase);

    /// <summary>Classifies a RocksDB open error: the LOCK file held (by this process or another), or something else.</summary>
    internal static CanopyStorageException MapOpenFailure(string fullPath, Exception error)
    {
        var message = error.Message;
        if (message.Contains("lock hold by current process", StringComparison.OrdinalIgnoreCase))
        {
            return new StoreInUseException(fullPath, heldByThisProcess: true, error);
        }

        var lockedByOtherProcess =
            (message.Contains("While lock file", StringComparison.OrdinalIgnoreCase) // POSIX: fcntl(F_SETLK) refused
             && !message.Contains("No locks available", StringComparison.OrdinalIgnoreCase)) // ENOLCK: no locking on this file system
            || (message.Contains("LOCK", StringComparison.Ordinal)
                && message.Contains("being used by another process", StringComparison.OrdinalIgnoreCase)); // Windows
        if (lockedByOtherProcess)
        {
            return new StoreInUseException(fullPath, heldByThisProcess: false, error);
        }

        return new CanopyStorageException($"cannot open store directory {fullPath}: {OneLine(message)}", error);
    }

    private static BlockBasedTableOptions BuildTableOptions(RocksDbEngineOptions options)
    {
        var table = new BlockBasedTableOptions()
            .SetBlockCache(SharedCache(options.BlockCacheBytes))
            .SetCacheIndexAndFilterBlocks(true)
            .SetPinL0FilterAndIndexBlocksInCache(true);
        if (options.BloomBitsPerKey > 0)
        {
            table.SetFilterPolicy(BloomFilterPolicy.Create(options.BloomBitsPerKey, use_block_based_builder: false));
        }

        return table;
    }

    private static DbOptions BuildDbOptions(RocksDbEngineOptions options, BlockBasedTableOptions table, bool lz4)
    {
        var dbOptions = new DbOptions()
            .SetCreateIfMissing(true)
            .SetBlockBasedTableFactory(table)
            .SetCompression(lz4 ? Compression.Lz4 : Compression.No)
            .SetWriteBufferSize((ulong)options.WriteBufferBytes)
            .SetWalRecoveryMode(Recovery.PointInTime)
            .SetLevelCompactionDynamicLevelBytes(true)
            .SetBytesPerSync(1024 * 1024)
            .SetKeepLogFileNum(5);
        Native.Instance.rocksdb_options_set_max_background_jobs(dbOptions.Handle, options.MaxBackgroundJobs);
        return dbOptions;
    }

    private static Cache SharedCache(long bytes)
    {
        lock (SharedCacheLock)
        {
            if (s_sharedCache is null)
            {
                s_sharedCache = Cache.CreateLru((ulong)bytes);
                s_sharedCacheBytes = bytes;
            }
            else if (bytes > s_sharedCacheBytes)
            {
                s_sharedCache.SetCapacity((ulong)bytes);
                s_sharedCacheBytes = bytes;
            }

            return s_sharedCache;
        }
    }

    private static string OneLine(string message) => message.ReplaceLineEndings(" ").Trim();

    private IEnumerable<KeyValuePair<byte[], byte[]>> ScanFrom(byte[] lower, byte[] upper)
    {
        Acquire();
        try
        {
            var readOptions = new ReadOptions().SetIterateLowerBound(lower).SetIterateUpperBound(upper);
            using var iterator = NewIterator(readOptions);
            Seek(iterator, lower);
            while (iterator.Valid())
            {
                yield return new(iterator.Key(), iterator.Value());
                iterator.Next();
            }

            ThrowIfIteratorFailed(iterator);
        }
        finally
        {
            Release();
        }
    }

    private Iterator NewIterator(ReadOptions readOptions)
    {
        try
        {
            return _db.NewIterator(readOptions: readOptions);
        }
        catch (RocksDbSharpException e)
        {
            throw Failure("scan", e);
        }
    }

    private void Seek(Iterator iterator, byte[] lower)
    {
        try
        {
            iterator.Seek(lower);
        }
        catch (RocksDbSharpException e)
        {
            throw Failure("scan", e);
        }
    }

    private void ThrowIfIteratorFailed(Iterator iterator)
    {
        try
        {
            Native.Instance.rocksdb_iter_get_error(iterator.Handle);
        }
        catch (RocksDbSharpException e)
        {
            throw Failure("scan", e);
        }
    }

    /// <summary>FlushWAL(sync: true): writes out and fsyncs every WAL record so far. The caller holds a reference.</summary>
    private void SyncWal()
    {
        try
        {
            Native.Instance.rocksdb_flush_wal(_db.Handle, 1);
        }
        catch (RocksDbSharpException e)
        {
            throw Failure("sync", e);
        }
    }

    private CanopyStorageException Failure(string what, Exception error) =>
        new($"{what} on store {StoreDirectory} failed: {OneLine(error.Message)}", error);

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);

    private void Acquire()
    {
        while (true)
        {
            ThrowIfDisposed();
            var current = Volatile.Read(ref _references);
            ObjectDisposedException.ThrowIf(current == 0, this);
            if (Interlocked.CompareExchange(ref _references, current + 1, current) == current)
            {
                return;
            }
        }
    }

    private void Release()
    {
        if (Interlocked.Decrement(ref _references) == 0)
        {
            _db.Dispose();
            GC.KeepAlive(_dbOptions);
            GC.KeepAlive(_tableOptions);
        }
    }
}
