namespace Canopy.Variant;

/// <summary>Why bytes could not be decoded as a Variant.</summary>
public enum VariantErrorCode
{
    /// <summary>The input ends inside a value.</summary>
    Truncated,

    /// <summary>The type byte is not a Godot 4 Variant type (39 or more).</summary>
    UnknownType,

    /// <summary>Header bits that this type does not use are set (the engine never writes them).</summary>
    InvalidHeader,

    /// <summary>A type that cannot cross the wire: RID, Object, Callable, Signal, or a script-typed container.</summary>
    Unsupported,

    /// <summary>A length or count is negative or larger than the rest of the input can hold.</summary>
    InvalidLength,

    /// <summary>A string is not valid UTF-8.</summary>
    InvalidUtf8,

    /// <summary>A NodePath in the pre-3.0 format (a plain string), which Godot 4 refuses too.</summary>
    InvalidNodePath,

    /// <summary>A typed container's element type is not a Variant type.</summary>
    InvalidContainerType,

    /// <summary>An element, key or value does not have the type of its typed container.</summary>
    ContainerTypeMismatch,

    /// <summary>Containers nested deeper than <see cref="VariantDecodeOptions.MaxDepth"/>.</summary>
    TooDeep,

    /// <summary>The input is longer than <see cref="VariantDecodeOptions.MaxBytes"/>, or holds more than <see cref="VariantDecodeOptions.MaxValues"/> values.</summary>
    TooLarge,

    /// <summary>Bytes follow the value (only <see cref="VariantCodec.Decode"/> and <see cref="VariantCodec.TryDecode"/> check this).</summary>
    TrailingBytes,
}

/// <summary>A decoding failure: what, where (byte offset into the input) and a message for logs.</summary>
public sealed record VariantDecodeError(VariantErrorCode Code, int Offset, string Message)
{
    public override string ToString() => $"{Code} at byte {Offset}: {Message}";
}

/// <summary>Thrown by <see cref="VariantCodec.Decode"/> for input that is not a valid (supported) Variant encoding.</summary>
public sealed class VariantFormatException : FormatException
{
    public VariantFormatException(VariantDecodeError error)
        : base(error?.ToString())
    {
        Error = error ?? throw new ArgumentNullException(nameof(error));
    }

    public VariantDecodeError Error { get; }
}

/// <summary>Thrown by <see cref="VariantCodec.Encode(GodotVariant)"/> for a value Godot cannot receive intact (a string with NUL or a lone
/// surrogate, nesting deeper than the engine accepts, an encoding of 2 GiB or more).</summary>
public sealed class VariantEncodeException : ArgumentException
{
    public VariantEncodeException(string message)
        : base(message)
    {
    }
}

/// <summary>Limits for decoding untrusted input. Every decode is bounded by them in time and memory.</summary>
public sealed record VariantDecodeOptions
{
    /// <summary>Hard ceiling for <see cref="MaxDepth"/>: keeps recursion far from the stack limit.</summary>
    public const int DepthCeiling = 1024;

    public static VariantDecodeOptions Default { get; } = new();

    private readonly int maxDepth = 64;
    private readonly int maxBytes = 8 * 1024 * 1024;
    private readonly int maxValues = 1_000_000;

    /// <summary>How deep containers may nest: the top value is at depth 0, its elements at 1, ... (default 64; Godot's own limit is 1024).</summary>
    public int MaxDepth
    {
        get => maxDepth;
        init => maxDepth = value is >= 0 and <= DepthCeiling ? value : throw new ArgumentOutOfRangeException(nameof(MaxDepth), value, $"0..{DepthCeiling}");
    }

    /// <summary>Largest input accepted, in bytes (default 8 MiB). Decoded size is proportional to it.</summary>
    public int MaxBytes
    {
        get => maxBytes;
        init => maxBytes = value >= 0 ? value : throw new ArgumentOutOfRangeException(nameof(MaxBytes), value, "must be >= 0");
    }

    /// <summary>Most Variant values (containers, their elements, keys and values; not packed array items) in one input (default 1,000,000).</summary>
    public int MaxValues
    {
        get => maxValues;
        init => maxValues = value >= 1 ? value : throw new ArgumentOutOfRangeException(nameof(MaxValues), value, "must be >= 1");
    }
}
