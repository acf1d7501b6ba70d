// Gateway protocol, version 1 (docs/protocol.md is the reference; keep the two in step)
namespace Canopy.Gateway;

using Canopy.Rpc;
using Canopy.Variant;

/// <summary>Constants and message builders of the WebSocket protocol.</summary>
public static class GatewayProtocol
{
    /// <summary>The protocol version this server speaks.</summary>
    public const int Version = 1;

    /// <summary>The path on the HTTP port.</summary>
    public const string Path = "/ws";

    /// <summary>Values of the "code" field of an error message.</summary>
    public static class Codes
    {
        public const string BadRequest = "bad_request";
        public const string Unauthenticated = "unauthenticated";
        public const string UnsupportedVersion = "unsupported_version";
        public const string TooLarge = "too_large";
        public const string RateLimited = "rate_limited";
        public const string NotFound = "not_found";
        public const string NotOwner = "not_owner";
        public const string NameTaken = "name_taken";
        public const string TxnAborted = "txn_aborted";
        public const string Ambiguous = "ambiguous";
        public const string Unavailable = "unavailable";
        public const string Internal = "internal";
    }

    /// <summary>{"op":"error","id":id,"code":code,"message":message} (id nil when the request had none).</summary>
    public static VariantDictionary Error(GodotVariant? id, string code, string message, params (string Key, GodotVariant Value)[] extra)
    {
        var entries = new List<(GodotVariant, GodotVariant)> { ("op", "error"), ("id", id ?? GodotVariant.Nil), ("code", code), ("message", message) };
        entries.AddRange(extra.Select(e => ((GodotVariant)e.Key, e.Value)));
        return new VariantDictionary([.. entries]);
    }

    /// <summary>{"op":"result","id":id, ...fields}.</summary>
    public static VariantDictionary Result(GodotVariant id, params (string Key, GodotVariant Value)[] fields)
    {
        var entries = new List<(GodotVariant, GodotVariant)> { ("op", "result"), ("id", id) };
        entries.AddRange(fields.Select(e => ((GodotVariant)e.Key, e.Value)));
        return new VariantDictionary([.. entries]);
    }

    /// <summary>The gateway error code of an RPC error code.</summary>
    internal static string CodeOf(RpcErrorCode code) => code switch
    {
        RpcErrorCode.BadRequest or RpcErrorCode.AlreadyInitialized or RpcErrorCode.ConditionFailed => Codes.BadRequest,
        RpcErrorCode.TxnAborted => Codes.TxnAborted,
        RpcErrorCode.Ambiguous => Codes.Ambiguous,
        RpcErrorCode.Internal => Codes.Internal,
        _ => Codes.Unavailable, // not leaseholder, range not found, unavailable, not initialised, refused
    };

    internal static GodotVariant Bytes(byte[]? b) => b is null ? GodotVariant.Nil : new PackedByteArray(b);
}

/// <summary>A request message's fields, read with type checks; the first problem becomes a bad_request.</summary>
internal sealed class Fields(VariantDictionary message)
{
    public string? Problem { get; private set; }

    public GodotVariant? Raw(string name) => message.TryGetValue(name, out var v) && v is not VariantNil ? v : null;

    public string? String(string name, bool required)
    {
        switch (Raw(name))
        {
            case null:
                return Missing<string>(name, required, "a String");
            case VariantString s:
                return s.Value;
            case VariantStringName s:
                return s.Value;
            default:
                return Wrong<string>(name, "a String");
        }
    }

    public byte[]? Bytes(string name, bool required) => Raw(name) switch
    {
        null => Missing<byte[]>(name, required, "a PackedByteArray"),
        PackedByteArray p => [.. p.Items],
        _ => Wrong<byte[]>(name, "a PackedByteArray"),
    };

    public long? Int(string name, bool required)
    {
        switch (Raw(name))
        {
            case null:
                Missing<string>(name, required, "an int");
                return null;
            case VariantInt i:
                return i.Value;
            default:
                Wrong<string>(name, "an int");
                return null;
        }
    }

    private T? Missing<T>(string name, bool required, string what)
        where T : class
    {
        if (required)
        {
            Problem ??= $"'{name}' ({what}) is required";
        }

        return null;
    }

    private T? Wrong<T>(string name, string what)
        where T : class
    {
        Problem ??= $"'{name}' must be {what}";
        return null;
    }
}
