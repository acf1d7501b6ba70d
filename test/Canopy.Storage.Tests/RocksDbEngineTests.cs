using static Canopy.Storage.Tests.Bytes;

namespace Canopy.Storage.Tests;

/// <summary><see cref="RocksDbEngine"/>: persistence across reopen, the directory lock, error mapping and lifetime.</summary>
public sealed class RocksDbEngineTests
{
    private static readonly byte[] Top = [0xFF, 0xFF, 0xFF, 0xFF];

    [Fact]
    public void Data_persists_across_reopen()
    {
        using var dir = new TempDirectory();
        var store = dir.Sub("store");
        using (var engine = RocksDbEngine.Open(store))
        {
            engine.Write(new WriteBatch().Put(S("a"), S("1")).Put(S("b"), S("2")).Put(S("c"), S("3")), sync: true);
            engine.Write(new WriteBatch().Delete(S("b")).Put(S("d"), []), sync: false);
            engine.Write(new WriteBatch().DeleteRange(S("c"), S("d")), sync: false);
            engine.Sync();
            engine.Write(new WriteBatch().Put(S("e"), S("5")), sync: false); // Made durable by the clean shutdown.
        }

        using (var engine = RocksDbEngine.Open(store))
        {
            AssertSameEntries([new(S("a"), S("1")), new(S("d"), []), new(S("e"), S("5"))], engine.Scan([], Top), "after reopen");
            Assert.Equal(S("1"), engine.Get(S("a")));
            Assert.Null(engine.Get(S("b")));
            Assert.Empty(engine.Get(S("d"))!); // An empty value is not a missing one.
        }
    }

    [Fact]
    public void Open_creates_missing_directories()
    {
        using var dir = new TempDirectory();
        var store = Path.Combine(dir.Path, "x", "y", "store");
        using var engine = RocksDbEngine.Open(store);
        Assert.True(Directory.Exists(store));
        Assert.Equal(Path.GetFullPath(store), engine.StoreDirectory);
    }

    [Fact]
    public void A_second_open_of_the_same_directory_throws_StoreInUseException()
    {
        using var dir = new TempDirectory();
        var store = dir.Sub("store");
        using (var first = RocksDbEngine.Open(store))
        {
            var e = Assert.Throws<StoreInUseException>(() => RocksDbEngine.Open(store));
            Assert.Equal($"store directory {Path.GetFullPath(store)} is in use by another engine instance in this process (LOCK held)", e.Message);
            Assert.True(e.HeldByThisProcess);
            Assert.Equal(Path.GetFullPath(store), e.StoreDirectory);
            Assert.IsAssignableFrom<CanopyStorageException>(e);
            Assert.DoesNotContain('\n', e.Message);

            first.Write(new WriteBatch().Put(S("k"), S("v")), sync: false); // The failed open did not disturb the first.
        }

        using var again = RocksDbEngine.Open(store); // The lock is released on dispose.
        Assert.Equal(S("v"), again.Get(S("k")));
    }

    [Theory]
    [InlineData("IO error: While lock file: /s/LOCK: Resource temporarily unavailable", false)] // Linux, other process
    [InlineData("IO error: While lock file: /s/LOCK: Permission denied", false)] // POSIX allows EACCES too
    [InlineData("IO error: lock hold by current process, acquire time 1795599927 acquiring thread 5071: /s/LOCK: No locks available", true)]
    [InlineData("IO error: Failed to create lock file: C:\\s/LOCK: The process cannot access the file because it is being used by another process.", false)]
    public void Lock_errors_map_to_StoreInUseException(string nativeMessage, bool thisProcess)
    {
        var mapped = RocksDbEngine.MapOpenFailure("/s", new InvalidOperationException(nativeMessage));

        var inUse = Assert.IsType<StoreInUseException>(mapped);
        Assert.Equal(thisProcess, inUse.HeldByThisProcess);
        Assert.StartsWith("store directory /s is in use by another ", inUse.Message, StringComparison.Ordinal);
        Assert.EndsWith("(LOCK held)", inUse.Message, StringComparison.Ordinal);
        Assert.Equal(nativeMessage, inUse.InnerException!.Message);
    }

    [Theory]
    [InlineData("IO error: While lock file: /s/LOCK: No locks available")] // File system without locking: not "in use".
    [InlineData("Corruption: CURRENT file does not end with newline")]
    [InlineData("IO error: While open a file for lock: /s/LOCK: Permission denied")]
    public void Other_open_errors_map_to_CanopyStorageException(string nativeMessage)
    {
        var mapped = RocksDbEngine.MapOpenFailure("/s", new InvalidOperationException(nativeMessage));

        Assert.IsType<CanopyStorageException>(mapped);
        Assert.Equal($"cannot open store directory /s: {nativeMessage}", mapped.Message);
    }

    [Fact]
    public void A_corrupt_store_fails_to_open_with_a_clear_message()
    {
        using var dir = new TempDirectory();
        var store = dir.Sub("store");
        using (var engine = RocksDbEngine.Open(store))
        {
            engine.Write(new WriteBatch().Put(S("a"), S("1")), sync: true);
        }

        File.WriteAllText(Path.Combine(store, "CURRENT"), "MANIFEST-999999"); // No newline, missing manifest.

        var e = Assert.Throws<CanopyStorageException>(() => RocksDbEngine.Open(store));
        Assert.IsNotType<StoreInUseException>(e);
        Assert.StartsWith($"cannot open store directory {Path.GetFullPath(store)}: ", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', e.Message);
        Assert.NotNull(e.InnerException);
    }

    [Fact]
    public void A_directory_that_cannot_be_created_fails_with_a_clear_message()
    {
        using var dir = new TempDirectory();
        var file = dir.Sub("a-file");
        File.WriteAllText(file, "not a directory");

        var e = Assert.Throws<CanopyStorageException>(() => RocksDbEngine.Open(Path.Combine(file, "store")));
        Assert.StartsWith("cannot create store directory ", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Reads_return_copies()
    {
        using var dir = new TempDirectory();
        using var engine = RocksDbEngine.Open(dir.Path);
        engine.Write(new WriteBatch().Put(S("k"), S("v")), sync: false);

        engine.Get(S("k"))![0] = (byte)'x';
        engine.Scan([], Top).Single().Value[0] = (byte)'x';

        Assert.Equal(S("v"), engine.Get(S("k")));
    }

    [Fact]
    public void A_null_batch_is_rejected()
    {
        using var dir = new TempDirectory();
        using var engine = RocksDbEngine.Open(dir.Path);
        Assert.Throws<ArgumentNullException>(() => engine.Write(null!, sync: false));
    }

    [Fact]
    public void A_disposed_engine_refuses_calls_and_a_scan_in_progress_finishes_first()
    {
        using var dir = new TempDirectory();
        var engine = RocksDbEngine.Open(dir.Path);
        engine.Write(new WriteBatch().Put(S("a"), S("1")).Put(S("b"), S("2")), sync: false);

        using (var scan = engine.Scan([], Top).GetEnumerator())
        {
            Assert.True(scan.MoveNext());
            engine.Dispose(); // The database stays open for the running scan...
            Assert.True(scan.MoveNext());
            Assert.Equal(S("b"), scan.Current.Key);
            Assert.False(scan.MoveNext());
        } // ...and closes here.

        engine.Dispose(); // Idempotent.
        Assert.Throws<ObjectDisposedException>(() => engine.Get(S("a")));
        Assert.Throws<ObjectDisposedException>(() => engine.Write(new WriteBatch().Put(S("c"), S("3")), sync: false));
        Assert.Throws<ObjectDisposedException>(engine.Sync);
        Assert.Throws<ObjectDisposedException>(() => engine.Scan([], Top));

        using var reopened = RocksDbEngine.Open(dir.Path); // Closed: the lock is free.
        Assert.Equal(S("2"), reopened.Get(S("b")));
    }

    [Fact]
    public void Options_are_validated()
    {
        using var dir = new TempDirectory();
        Assert.Throws<ArgumentOutOfRangeException>(() => RocksDbEngine.Open(dir.Path, new RocksDbEngineOptions { MaxBackgroundJobs = 0 }));
        using var engine = RocksDbEngine.Open(dir.Path, new RocksDbEngineOptions { Compression = false, BloomBitsPerKey = 0 });
        Assert.False(engine.UsesLz4Compression);
    }
}
