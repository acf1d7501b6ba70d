namespace Canopy.Client;

using Canopy.Rpc;

/// <summary>A failure reported by <see cref="CanopyClient"/>. The message is always one line.</summary>
public abstract class CanopyException : Exception
{
    protected CanopyException(string message, Exception? innerException = null)
        : base(OneLine(message), innerException)
    {
    }

    internal static string OneLine(string message)
    {
        var line = message.ReplaceLineEndings(" ").Trim();
        return line.Length == 0 ? "failed" : line;
    }
}

/// <summary>
/// No server could serve the call: none answered, or the call's deadline passed while retrying (the message names
/// the last error). For a write the outcome is unknown only if the message says an attempt was sent; retrying a
/// plain put or delete is safe.
/// </summary>
public sealed class CanopyUnavailableException : CanopyException
{
    public CanopyUnavailableException(string message, Exception? innerException = null)
        : base(message, innerException)
    {
    }
}

/// <summary>The server lost track of a write mid-commit: it may or may not have happened. Not retried.</summary>
public sealed class CanopyAmbiguousException : CanopyException
{
    public CanopyAmbiguousException(string message, string? address = null)
        : base(message)
    {
        Address = address;
    }

    /// <summary>The server that answered.</summary>
    public string? Address { get; }
}

/// <summary>A final error answered by a server (BadRequest, NotInitialized, AlreadyInitialized, Refused, Internal).</summary>
public sealed class CanopyRpcException : CanopyException
{
    public CanopyRpcException(RpcErrorCode code, string message, string? address = null)
        : base(message)
    {
        Code = code;
        Address = address;
    }

    public RpcErrorCode Code { get; }

    /// <summary>The server that answered.</summary>
    public string? Address { get; }
}
