using System.Collections.Immutable;
using System.Globalization;
using System.Text;

namespace Canopy.Variant;

/// <summary>Godot 4's <c>Variant.Type</c> numbering (the low byte of every encoded value's header).</summary>
public enum VariantType
{
    Nil = 0,
    Bool = 1,
    Int = 2,
    Float = 3,
    String = 4,
    Vector2 = 5,
    Vector2I = 6,
    Rect2 = 7,
    Rect2I = 8,
    Vector3 = 9,
    Vector3I = 10,
    Transform2D = 11,
    Vector4 = 12,
    Vector4I = 13,
    Plane = 14,
    Quaternion = 15,
    Aabb = 16,
    Basis = 17,
    Transform3D = 18,
    Projection = 19,
    Color = 20,
    StringName = 21,
    NodePath = 22,
    Rid = 23,
    Object = 24,
    Callable = 25,
    Signal = 26,
    Dictionary = 27,
    Array = 28,
    PackedByteArray = 29,
    PackedInt32Array = 30,
    PackedInt64Array = 31,
    PackedFloat32Array = 32,
    PackedFloat64Array = 33,
    PackedStringArray = 34,
    PackedVector2Array = 35,
    PackedVector3Array = 36,
    PackedColorArray = 37,
    PackedVector4Array = 38,
}

/// <summary>
/// A Godot Variant value that can cross the wire: a closed set of immutable types, one per supported
/// <see cref="VariantType"/> (everything except RID, Object, Callable and Signal, which are handles local to one engine).
/// Match on the concrete type (<see cref="VariantInt"/>, <see cref="VariantArray"/>, ...); build with the
/// constructors or the implicit conversions (<c>GodotVariant v = 5;</c>, <c>= "text"</c>, <c>= new Vector3(1, 2, 3)</c>).
/// Equality is structural and deep, with Godot's rules for floats (NaN equals NaN, 0 equals -0); an int never equals a float
/// and a String never equals a StringName (but see <see cref="KeyComparer"/>).
/// </summary>
public abstract class GodotVariant : IEquatable<GodotVariant>
{
    // Hashing walks nested containers only this deep (equal values still hash equal; deeper levels add nothing).
    private protected const int HashDepth = 8;

    private protected GodotVariant()
    {
    }

    public abstract VariantType Type { get; }

    /// <summary>The nil value (GDScript <c>null</c>).</summary>
    public static VariantNil Nil => VariantNil.Instance;

    /// <summary>
    /// Key equality of a Godot <c>Dictionary</c>: deep equality, except that a String and a StringName with the same text
    /// are the same key (Godot 4 treats them so: <c>{"k": 1}[&amp;"k"]</c> is 1).
    /// </summary>
    public static IEqualityComparer<GodotVariant> KeyComparer { get; } = new DictionaryKeyComparer();

    public abstract bool Equals(GodotVariant? other);

    public override bool Equals(object? obj) => obj is GodotVariant v && Equals(v);

    public override int GetHashCode() => Hash(HashDepth);

    private protected abstract int Hash(int depth);

    private protected static int HashOf(GodotVariant v, int depth) => v.Hash(depth);

    public static bool operator ==(GodotVariant? a, GodotVariant? b) => a is null ? b is null : a.Equals(b);

    public static bool operator !=(GodotVariant? a, GodotVariant? b) => !(a == b);

    public static implicit operator GodotVariant(bool value) => value ? VariantBool.True : VariantBool.False;

    public static implicit operator GodotVariant(int value) => new VariantInt(value);

    public static implicit operator GodotVariant(long value) => new VariantInt(value);

    public static implicit operator GodotVariant(double value) => new VariantFloat(value);

    public static implicit operator GodotVariant(string value) => new VariantString(value);

    public static implicit operator GodotVariant(Vector2 value) => new VariantVector2(value);

    public static implicit operator GodotVariant(Vector2I value) => new VariantVector2I(value);

    public static implicit operator GodotVariant(Rect2 value) => new VariantRect2(value);

    public static implicit operator GodotVariant(Rect2I value) => new VariantRect2I(value);

    public static implicit operator GodotVariant(Vector3 value) => new VariantVector3(value);

    public static implicit operator GodotVariant(Vector3I value) => new VariantVector3I(value);

    public static implicit operator GodotVariant(Transform2D value) => new VariantTransform2D(value);

    public static implicit operator GodotVariant(Vector4 value) => new VariantVector4(value);

    public static implicit operator GodotVariant(Vector4I value) => new VariantVector4I(value);

    public static implicit operator GodotVariant(Plane value) => new VariantPlane(value);

    public static implicit operator GodotVariant(Quaternion value) => new VariantQuaternion(value);

    public static implicit operator GodotVariant(Aabb value) => new VariantAabb(value);

    public static implicit operator GodotVariant(Basis value) => new VariantBasis(value);

    public static implicit operator GodotVariant(Transform3D value) => new VariantTransform3D(value);

    public static implicit operator GodotVariant(Projection value) => new VariantProjection(value);

    public static implicit operator GodotVariant(Color value) => new VariantColor(value);

    public static implicit operator GodotVariant(NodePath value) => new VariantNodePath(value);

    /// <summary>A GDScript-like rendering for logs and test messages (not a parser-exact literal).</summary>
    public abstract override string ToString();

    internal static string Quote(string s)
    {
        var sb = new StringBuilder(s.Length + 2);
        sb.Append('"');
        foreach (var c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\t': sb.Append("\\t"); break;
                case '\r': sb.Append("\\r"); break;
                default:
                    if (c < 0x20)
                    {
                        sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    }
                    else
                    {
                        sb.Append(c);
                    }

                    break;
            }
        }

        return sb.Append('"').ToString();
    }

    private sealed class DictionaryKeyComparer : IEqualityComparer<GodotVariant>
    {
        public bool Equals(GodotVariant? x, GodotVariant? y)
        {
            if (x is null || y is null)
            {
                return x is null && y is null;
            }

            if (StringLike(x) is { } sx && StringLike(y) is { } sy)
            {
                return string.Equals(sx, sy, StringComparison.Ordinal);
            }

            return x.Equals(y);
        }

        public int GetHashCode(GodotVariant obj) =>
            StringLike(obj) is { } s ? StringComparer.Ordinal.GetHashCode(s) : obj.GetHashCode();

        private static string? StringLike(GodotVariant v) => v switch
        {
            VariantString s => s.Value,
            VariantStringName n => n.Value,
            _ => null,
        };
    }
}

/// <summary>A variant holding one value of type <typeparamref name="T"/> (scalars, strings, math types, NodePath).</summary>
public abstract class VariantValue<T> : GodotVariant
    where T : notnull
{
    private protected VariantValue(T value)
    {
        Value = value;
    }

    public T Value { get; }

    public override bool Equals(GodotVariant? other) =>
        other is VariantValue<T> o && o.Type == Type && EqualityComparer<T>.Default.Equals(Value, o.Value);

    private protected override int Hash(int depth) => HashCode.Combine(Type, Value);

    public override string ToString() => $"{Type}{Value}";
}

/// <summary>GDScript <c>null</c>.</summary>
public sealed class VariantNil : GodotVariant
{
    internal static readonly VariantNil Instance = new();

    private VariantNil()
    {
    }

    public override VariantType Type => VariantType.Nil;

    public override bool Equals(GodotVariant? other) => other is VariantNil;

    private protected override int Hash(int depth) => 0x1A2B3C;

    public override string ToString() => "null";
}

public sealed class VariantBool : VariantValue<bool>
{
    public static readonly VariantBool True = new(true);
    public static readonly VariantBool False = new(false);

    public VariantBool(bool value)
        : base(value)
    {
    }

    public override VariantType Type => VariantType.Bool;

    public override string ToString() => Value ? "true" : "false";
}

/// <summary>GDScript <c>int</c> (64-bit).</summary>
public sealed class VariantInt : VariantValue<long>
{
    public VariantInt(long value)
        : base(value)
    {
    }

    public override VariantType Type => VariantType.Int;

    public override string ToString() => Value.ToString(CultureInfo.InvariantCulture);
}

/// <summary>GDScript <c>float</c> (64-bit; sent as float32 when that is exact).</summary>
public sealed class VariantFloat : VariantValue<double>
{
    public VariantFloat(double value)
        : base(value)
    {
    }

    public override VariantType Type => VariantType.Float;

    public override string ToString() => F.S(Value);
}

/// <summary>GDScript <c>String</c>. Must be valid UTF-16 without NUL characters to be encodable.</summary>
public sealed class VariantString : VariantValue<string>
{
    public VariantString(string value)
        : base(value ?? throw new ArgumentNullException(nameof(value)))
    {
    }

    public override VariantType Type => VariantType.String;

    public override string ToString() => Quote(Value);
}

/// <summary>GDScript <c>StringName</c> (<c>&amp;"name"</c>).</summary>
public sealed class VariantStringName : VariantValue<string>
{
    public VariantStringName(string value)
        : base(value ?? throw new ArgumentNullException(nameof(value)))
    {
    }

    public override VariantType Type => VariantType.StringName;

    public override string ToString() => "&" + Quote(Value);
}

/// <summary>GDScript <c>NodePath</c> (<c>^"path"</c>).</summary>
public sealed class VariantNodePath : VariantValue<NodePath>
{
    public VariantNodePath(NodePath value)
        : base(value ?? throw new ArgumentNullException(nameof(value)))
    {
    }

    public VariantNodePath(string path)
        : base(NodePath.Parse(path))
    {
    }

    public override VariantType Type => VariantType.NodePath;

    public override string ToString() => "^" + Quote(Value.ToString());
}

public sealed class VariantVector2(Vector2 value) : VariantValue<Vector2>(value)
{
    public override VariantType Type => VariantType.Vector2;

    public override string ToString() => "Vector2" + Value;
}

public sealed class VariantVector2I(Vector2I value) : VariantValue<Vector2I>(value)
{
    public override VariantType Type => VariantType.Vector2I;

    public override string ToString() => "Vector2i" + Value;
}

public sealed class VariantRect2(Rect2 value) : VariantValue<Rect2>(value)
{
    public override VariantType Type => VariantType.Rect2;

    public override string ToString() => "Rect2" + Value;
}

public sealed class VariantRect2I(Rect2I value) : VariantValue<Rect2I>(value)
{
    public override VariantType Type => VariantType.Rect2I;

    public override string ToString() => "Rect2i" + Value;
}

public sealed class VariantVector3(Vector3 value) : VariantValue<Vector3>(value)
{
    public override VariantType Type => VariantType.Vector3;

    public override string ToString() => "Vector3" + Value;
}

public sealed class VariantVector3I(Vector3I value) : VariantValue<Vector3I>(value)
{
    public override VariantType Type => VariantType.Vector3I;

    public override string ToString() => "Vector3i" + Value;
}

public sealed class VariantTransform2D(Transform2D value) : VariantValue<Transform2D>(value)
{
    public override VariantType Type => VariantType.Transform2D;

    public override string ToString() => "Transform2D" + Value;
}

public sealed class VariantVector4(Vector4 value) : VariantValue<Vector4>(value)
{
    public override VariantType Type => VariantType.Vector4;

    public override string ToString() => "Vector4" + Value;
}

public sealed class VariantVector4I(Vector4I value) : VariantValue<Vector4I>(value)
{
    public override VariantType Type => VariantType.Vector4I;

    public override string ToString() => "Vector4i" + Value;
}

public sealed class VariantPlane(Plane value) : VariantValue<Plane>(value)
{
    public override VariantType Type => VariantType.Plane;

    public override string ToString() => "Plane" + Value;
}

public sealed class VariantQuaternion(Quaternion value) : VariantValue<Quaternion>(value)
{
    public override VariantType Type => VariantType.Quaternion;

    public override string ToString() => "Quaternion" + Value;
}

public sealed class VariantAabb(Aabb value) : VariantValue<Aabb>(value)
{
    public override VariantType Type => VariantType.Aabb;

    public override string ToString() => "AABB" + Value;
}

public sealed class VariantBasis(Basis value) : VariantValue<Basis>(value)
{
    public override VariantType Type => VariantType.Basis;

    public override string ToString() => "Basis" + Value;
}

public sealed class VariantTransform3D(Transform3D value) : VariantValue<Transform3D>(value)
{
    public override VariantType Type => VariantType.Transform3D;

    public override string ToString() => "Transform3D" + Value;
}

public sealed class VariantProjection(Projection value) : VariantValue<Projection>(value)
{
    public override VariantType Type => VariantType.Projection;

    public override string ToString() => "Projection" + Value;
}

public sealed class VariantColor(Color value) : VariantValue<Color>(value)
{
    public override VariantType Type => VariantType.Color;

    public override string ToString() => "Color" + Value;
}

/// <summary>
/// The element type of a typed Godot <c>Array</c> (or the key / value type of a typed <c>Dictionary</c>):
/// <see cref="None"/> for untyped, a built-in type, or <see cref="VariantType.Object"/> with a class name.
/// <c>var_to_bytes</c> writes the class name of object-typed containers as <c>EncodedObjectAsID</c>.
/// </summary>
public readonly record struct ContainerType
{
    public ContainerType(VariantType builtinType, string? className = null)
    {
        if ((uint)builtinType > (uint)VariantType.PackedVector4Array)
        {
            throw new ArgumentOutOfRangeException(nameof(builtinType), builtinType, "not a Variant type");
        }

        if (className is not null && builtinType != VariantType.Object)
        {
            throw new ArgumentException("only object-typed containers have a class name", nameof(className));
        }

        BuiltinType = builtinType;
        ClassName = className;
    }

    public static ContainerType None => default;

    public VariantType BuiltinType { get; }

    public string? ClassName { get; }

    public bool IsTyped => BuiltinType != VariantType.Nil;

    /// <summary>Whether <paramref name="value"/> may be an element: any value when untyped, nil for object-typed
    /// containers (objects themselves are not supported), otherwise exactly the built-in type.</summary>
    public bool Admits(GodotVariant value) => BuiltinType switch
    {
        VariantType.Nil => true,
        VariantType.Object => value.Type == VariantType.Nil,
        _ => value.Type == BuiltinType,
    };

    public override string ToString() => !IsTyped ? "Variant" : ClassName ?? BuiltinType.ToString();
}

/// <summary>GDScript <c>Array</c>, optionally typed (<c>Array[int]</c>). Immutable.</summary>
public sealed class VariantArray : GodotVariant, IReadOnlyList<GodotVariant>
{
    public static readonly VariantArray Empty = new([], ContainerType.None, trusted: true);

    public VariantArray(params GodotVariant[] items)
        : this(items, ContainerType.None)
    {
    }

    public VariantArray(IEnumerable<GodotVariant> items, ContainerType elementType = default)
    {
        ArgumentNullException.ThrowIfNull(items);
        Items = [.. items];
        ElementType = elementType;
        foreach (var item in Items)
        {
            ArgumentNullException.ThrowIfNull(item, nameof(items));
            if (!elementType.Admits(item))
            {
                throw new ArgumentException($"a {item.Type} cannot be an element of an Array[{elementType}]", nameof(items));
            }
        }
    }

    internal VariantArray(ImmutableArray<GodotVariant> items, ContainerType elementType, bool trusted)
    {
        _ = trusted;
        Items = items;
        ElementType = elementType;
    }

    public override VariantType Type => VariantType.Array;

    public ImmutableArray<GodotVariant> Items { get; }

    public ContainerType ElementType { get; }

    public int Count => Items.Length;

    public GodotVariant this[int index] => Items[index];

    public IEnumerator<GodotVariant> GetEnumerator() => ((IEnumerable<GodotVariant>)Items).GetEnumerator();

    System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();

    public override bool Equals(GodotVariant? other)
    {
        if (other is not VariantArray o || o.ElementType != ElementType || o.Items.Length != Items.Length)
        {
            return false;
        }

        for (var i = 0; i < Items.Length; i++)
        {
            if (!Items[i].Equals(o.Items[i]))
            {
                return false;
            }
        }

        return true;
    }

    private protected override int Hash(int depth)
    {
        var h = new HashCode();
        h.Add(VariantType.Array);
        h.Add(ElementType);
        h.Add(Items.Length);
        if (depth > 0)
        {
            foreach (var item in Items)
            {
                h.Add(HashOf(item, depth - 1));
            }
        }

        return h.ToHashCode();
    }

    public override string ToString()
    {
        var body = "[" + string.Join(", ", Items.Select(i => i.ToString())) + "]";
        return ElementType.IsTyped ? $"Array[{ElementType}]{body}" : body;
    }
}

/// <summary>
/// GDScript <c>Dictionary</c>, optionally typed: entries in insertion order (the order they are encoded in), keys unique
/// under <see cref="GodotVariant.KeyComparer"/>. Built as Godot builds one: a repeated key keeps its first position and
/// takes the last value. Immutable.
/// </summary>
public sealed class VariantDictionary : GodotVariant, IReadOnlyCollection<KeyValuePair<GodotVariant, GodotVariant>>
{
    public static readonly VariantDictionary Empty = new(ImmutableArray<KeyValuePair<GodotVariant, GodotVariant>>.Empty, default, default);

    // Key -> position in Entries; built on the first lookup (decoded dictionaries are often only re-encoded or enumerated).
    private Dictionary<GodotVariant, int>? index;

    public VariantDictionary(IEnumerable<KeyValuePair<GodotVariant, GodotVariant>> entries, ContainerType keyType = default, ContainerType valueType = default)
    {
        ArgumentNullException.ThrowIfNull(entries);
        KeyType = keyType;
        ValueType = valueType;
        var builder = new Builder(0);
        foreach (var (key, value) in entries)
        {
            ArgumentNullException.ThrowIfNull(key, nameof(entries));
            ArgumentNullException.ThrowIfNull(value, nameof(entries));
            if (!keyType.Admits(key))
            {
                throw new ArgumentException($"a {key.Type} cannot be a key of a Dictionary[{keyType}, {valueType}]", nameof(entries));
            }

            if (!valueType.Admits(value))
            {
                throw new ArgumentException($"a {value.Type} cannot be a value of a Dictionary[{keyType}, {valueType}]", nameof(entries));
            }

            builder.Put(key, value);
        }

        Entries = builder.ToImmutable();
    }

    public VariantDictionary(params (GodotVariant Key, GodotVariant Value)[] entries)
        : this(entries.Select(e => KeyValuePair.Create(e.Key, e.Value)))
    {
    }

    // Decoder path: unique keys, already checked against the container types.
    internal VariantDictionary(ImmutableArray<KeyValuePair<GodotVariant, GodotVariant>> deduplicated, ContainerType keyType, ContainerType valueType)
    {
        Entries = deduplicated;
        KeyType = keyType;
        ValueType = valueType;
    }

    public override VariantType Type => VariantType.Dictionary;

    public ImmutableArray<KeyValuePair<GodotVariant, GodotVariant>> Entries { get; }

    public ContainerType KeyType { get; }

    public ContainerType ValueType { get; }

    public int Count => Entries.Length;

    public GodotVariant this[GodotVariant key] =>
        TryGetValue(key, out var value) ? value : throw new KeyNotFoundException($"key {key} is not in the dictionary");

    public bool TryGetValue(GodotVariant key, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out GodotVariant? value)
    {
        ArgumentNullException.ThrowIfNull(key);
        if (Index.TryGetValue(key, out var i))
        {
            value = Entries[i].Value;
            return true;
        }

        value = null;
        return false;
    }

    public bool ContainsKey(GodotVariant key) => Index.ContainsKey(key);

    public IEnumerator<KeyValuePair<GodotVariant, GodotVariant>> GetEnumerator() => ((IEnumerable<KeyValuePair<GodotVariant, GodotVariant>>)Entries).GetEnumerator();

    System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();

    private Dictionary<GodotVariant, int> Index
    {
        get
        {
            if (Volatile.Read(ref index) is { } built)
            {
                return built;
            }

            var d = new Dictionary<GodotVariant, int>(Entries.Length, KeyComparer);
            for (var i = 0; i < Entries.Length; i++)
            {
                d.Add(Entries[i].Key, i);
            }

            return Interlocked.CompareExchange(ref index, d, null) ?? d;
        }
    }

    /// <summary>
    /// Collects entries as Godot's Dictionary does: a repeated key (under <see cref="GodotVariant.KeyComparer"/>) keeps its
    /// first position and takes the last value. Small dictionaries are deduplicated by a linear scan, larger ones with a
    /// hash index, so memory stays proportional to the entries.
    /// </summary>
    internal struct Builder(int capacity)
    {
        private const int LinearScanLimit = 8;
        private KeyValuePair<GodotVariant, GodotVariant>[] entries = capacity == 0 ? [] : new KeyValuePair<GodotVariant, GodotVariant>[capacity];
        private Dictionary<GodotVariant, int>? lookup;
        private int count;

        /// <summary>Adds or overwrites; <paramref name="growLimit"/> caps how far the buffer grows (the claimed entry count).</summary>
        public void Put(GodotVariant key, GodotVariant value, int growLimit = int.MaxValue)
        {
            var at = Find(key);
            if (at >= 0)
            {
                entries[at] = KeyValuePair.Create(entries[at].Key, value);
                return;
            }

            if (count == entries.Length)
            {
                Array.Resize(ref entries, (int)Math.Min(Math.Max(2L * entries.Length, 4), Math.Max(growLimit, count + 1)));
            }

            lookup?.Add(key, count);
            entries[count++] = KeyValuePair.Create(key, value);
            if (lookup is null && count > LinearScanLimit)
            {
                lookup = new Dictionary<GodotVariant, int>(count * 2, KeyComparer);
                for (var i = 0; i < count; i++)
                {
                    lookup.Add(entries[i].Key, i);
                }
            }
        }

        public ImmutableArray<KeyValuePair<GodotVariant, GodotVariant>> ToImmutable()
        {
            if (count != entries.Length)
            {
                Array.Resize(ref entries, count);
            }

            return System.Runtime.InteropServices.ImmutableCollectionsMarshal.AsImmutableArray(entries);
        }

        private readonly int Find(GodotVariant key)
        {
            if (lookup is not null)
            {
                return lookup.TryGetValue(key, out var i) ? i : -1;
            }

            for (var i = 0; i < count; i++)
            {
                if (KeyComparer.Equals(entries[i].Key, key))
                {
                    return i;
                }
            }

            return -1;
        }
    }

    /// <summary>Equal when the types match and the entries are equal in the same order (order is part of the encoding).</summary>
    public override bool Equals(GodotVariant? other)
    {
        if (other is not VariantDictionary o || o.KeyType != KeyType || o.ValueType != ValueType || o.Entries.Length != Entries.Length)
        {
            return false;
        }

        for (var i = 0; i < Entries.Length; i++)
        {
            if (!Entries[i].Key.Equals(o.Entries[i].Key) || !Entries[i].Value.Equals(o.Entries[i].Value))
            {
                return false;
            }
        }

        return true;
    }

    private protected override int Hash(int depth)
    {
        var h = new HashCode();
        h.Add(VariantType.Dictionary);
        h.Add(KeyType);
        h.Add(ValueType);
        h.Add(Entries.Length);
        if (depth > 0)
        {
            foreach (var (k, v) in Entries)
            {
                h.Add(HashOf(k, depth - 1));
                h.Add(HashOf(v, depth - 1));
            }
        }

        return h.ToHashCode();
    }

    public override string ToString()
    {
        var body = "{" + string.Join(", ", Entries.Select(e => $"{e.Key}: {e.Value}")) + "}";
        return KeyType.IsTyped || ValueType.IsTyped ? $"Dictionary[{KeyType}, {ValueType}]{body}" : body;
    }
}

/// <summary>A packed array of <typeparamref name="T"/> (Godot's <c>Packed*Array</c> types). Immutable.</summary>
public abstract class PackedArray<T> : GodotVariant, IReadOnlyList<T>
    where T : notnull
{
    private protected PackedArray(ImmutableArray<T> items)
    {
        Items = items;
    }

    public ImmutableArray<T> Items { get; }

    public int Count => Items.Length;

    public T this[int index] => Items[index];

    public IEnumerator<T> GetEnumerator() => ((IEnumerable<T>)Items).GetEnumerator();

    System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();

    public override bool Equals(GodotVariant? other)
    {
        if (other is not PackedArray<T> o || o.Type != Type || o.Items.Length != Items.Length)
        {
            return false;
        }

        var cmp = EqualityComparer<T>.Default;
        for (var i = 0; i < Items.Length; i++)
        {
            if (!cmp.Equals(Items[i], o.Items[i]))
            {
                return false;
            }
        }

        return true;
    }

    private protected override int Hash(int depth)
    {
        var h = new HashCode();
        h.Add(Type);
        h.Add(Items.Length);
        foreach (var item in Items.AsSpan()[..Math.Min(Items.Length, 64)])
        {
            h.Add(item);
        }

        return h.ToHashCode();
    }

    public override string ToString() => $"{Type}([{string.Join(", ", Items.Select(Render))}])";

    private protected virtual string Render(T item) => item.ToString() ?? string.Empty;
}

public sealed class PackedByteArray : PackedArray<byte>
{
    public PackedByteArray(ReadOnlySpan<byte> items)
        : base([.. items])
    {
    }

    private PackedByteArray(ImmutableArray<byte> items)
        : base(items)
    {
    }

    internal static PackedByteArray Of(ImmutableArray<byte> items) => new(items);

    public override VariantType Type => VariantType.PackedByteArray;
}

public sealed class PackedInt32Array : PackedArray<int>
{
    public PackedInt32Array(ReadOnlySpan<int> items)
        : base([.. items])
    {
    }

    private PackedInt32Array(ImmutableArray<int> items)
        : base(items)
    {
    }

    internal static PackedInt32Array Of(ImmutableArray<int> items) => new(items);

    public override VariantType Type => VariantType.PackedInt32Array;
}

public sealed class PackedInt64Array : PackedArray<long>
{
    public PackedInt64Array(ReadOnlySpan<long> items)
        : base([.. items])
    {
    }

    private PackedInt64Array(ImmutableArray<long> items)
        : base(items)
    {
    }

    internal static PackedInt64Array Of(ImmutableArray<long> items) => new(items);

    public override VariantType Type => VariantType.PackedInt64Array;
}

public sealed class PackedFloat32Array : PackedArray<float>
{
    public PackedFloat32Array(ReadOnlySpan<float> items)
        : base([.. items])
    {
    }

    private PackedFloat32Array(ImmutableArray<float> items)
        : base(items)
    {
    }

    internal static PackedFloat32Array Of(ImmutableArray<float> items) => new(items);

    public override VariantType Type => VariantType.PackedFloat32Array;

    private protected override string Render(float item) => F.S(item);
}

public sealed class PackedFloat64Array : PackedArray<double>
{
    public PackedFloat64Array(ReadOnlySpan<double> items)
        : base([.. items])
    {
    }

    private PackedFloat64Array(ImmutableArray<double> items)
        : base(items)
    {
    }

    internal static PackedFloat64Array Of(ImmutableArray<double> items) => new(items);

    public override VariantType Type => VariantType.PackedFloat64Array;

    private protected override string Render(double item) => F.S(item);
}

/// <summary>Godot <c>PackedStringArray</c>. Strings must be valid UTF-16 without NUL characters to be encodable.</summary>
public sealed class PackedStringArray : PackedArray<string>
{
    public PackedStringArray(params string[] items)
        : this((IEnumerable<string>)items)
    {
    }

    public PackedStringArray(IEnumerable<string> items)
        : base([.. items ?? throw new ArgumentNullException(nameof(items))])
    {
        foreach (var s in Items)
        {
            ArgumentNullException.ThrowIfNull(s, nameof(items));
        }
    }

    private PackedStringArray(ImmutableArray<string> items)
        : base(items)
    {
    }

    internal static PackedStringArray Of(ImmutableArray<string> items) => new(items);

    public override VariantType Type => VariantType.PackedStringArray;

    private protected override string Render(string item) => Quote(item);
}

public sealed class PackedVector2Array : PackedArray<Vector2>
{
    public PackedVector2Array(ReadOnlySpan<Vector2> items)
        : base([.. items])
    {
    }

    private PackedVector2Array(ImmutableArray<Vector2> items)
        : base(items)
    {
    }

    internal static PackedVector2Array Of(ImmutableArray<Vector2> items) => new(items);

    public override VariantType Type => VariantType.PackedVector2Array;
}

public sealed class PackedVector3Array : PackedArray<Vector3>
{
    public PackedVector3Array(ReadOnlySpan<Vector3> items)
        : base([.. items])
    {
    }

    private PackedVector3Array(ImmutableArray<Vector3> items)
        : base(items)
    {
    }

    internal static PackedVector3Array Of(ImmutableArray<Vector3> items) => new(items);

    public override VariantType Type => VariantType.PackedVector3Array;
}

public sealed class PackedColorArray : PackedArray<Color>
{
    public PackedColorArray(ReadOnlySpan<Color> items)
        : base([.. items])
    {
    }

    private PackedColorArray(ImmutableArray<Color> items)
        : base(items)
    {
    }

    internal static PackedColorArray Of(ImmutableArray<Color> items) => new(items);

    public override VariantType Type => VariantType.PackedColorArray;
}

public sealed class PackedVector4Array : PackedArray<Vector4>
{
    public PackedVector4Array(ReadOnlySpan<Vector4> items)
        : base([.. items])
    {
    }

    private PackedVector4Array(ImmutableArray<Vector4> items)
        : base(items)
    {
    }

    internal static PackedVector4Array Of(ImmutableArray<Vector4> items) => new(items);

    public override VariantType Type => VariantType.PackedVector4Array;
}
