namespace Canopy.Storage;

/// <summary>
/// A storage engine failed: the store could not be opened, or a read, write or sync did not complete.
/// The message says which store and what failed in one line; the native error, if any, is the inner exception
/// and is quoted at the end of the message.
/// </summary>
public class CanopyStorageException : Exception
{
    public CanopyStorageException()
        : base("storage engine failure")
    {
    }

    public CanopyStorageException(string message)
        : base(message)
    {
    }

    public CanopyStorageException(string message, Exception? innerException)
        : base(message, innerException)
    {
    }
}

/// <summary>
/// The store directory is locked by another open engine: another canopy process, or another engine instance in
/// this process (RocksDB's <c>LOCK</c> file is held). Nothing was changed; retrying after the holder exits can succeed.
/// </summary>
public sealed class StoreInUseException : CanopyStorageException
{
    public StoreInUseException()
        : base("store directory is in use by another canopy process (LOCK held)")
    {
    }

    public StoreInUseException(string message)
        : base(message)
    {
    }

    public StoreInUseException(string message, Exception innerException)
        : base(message, innerException)
    {
    }

    /// <summary>Creates the exception for <paramref name="storeDirectory"/> with the standard one-line message.</summary>
    public StoreInUseException(string storeDirectory, bool heldByThisProcess, Exception? innerException)
        : base(MessageFor(storeDirectory, heldByThisProcess), innerException)
    {
        StoreDirectory = storeDirectory;
        HeldByThisProcess = heldByThisProcess;
    }

    /// <summary>The full path of the locked store directory, when known.</summary>
    public string? StoreDirectory { get; }

    /// <summary>True when the lock is held by another engine instance in this same process.</summary>
    public bool HeldByThisProcess { get; }

    private static string MessageFor(string storeDirectory, bool heldByThisProcess) => heldByThisProcess
        ? $"store directory {storeDirectory} is in use by another engine instance in this process (LOCK held)"
        : $"store directory {storeDirectory} is in use by another canopy process (LOCK held)";
}
