// Godot 4 Variant binary serialization: the format of GDScript's var_to_bytes / bytes_to_var (without objects), as the
// Godot 4.6 engine writes it in its default single-precision build (real_t = float32). Checked byte for byte against the
// real engine: test/Canopy.Variant.Tests/golden/godot-4.6-variants.txt, produced by tools/godot-goldens.
//
// Every integer is little-endian. Every value starts with a u32 header:
//   bits 0-7   Variant type (VariantType: 0 Nil ... 38 PackedVector4Array)
//   bits 8-15  unused, 0
//   bit  16    FLAG_64 for Int, Float, the float math types and PackedVector2/3/4Array: the payload is 64-bit
//   bits 16-17 for Array: element type kind; bits 16-17 / 18-19 for Dictionary: key / value type kind
//              (kind 0 untyped, 1 built-in type: u32 type follows, 2 class name: string follows, 3 script path: string follows)
// Every value's size is a multiple of 4. "string" below = u32 byte length + UTF-8 bytes + zero padding to a multiple of 4.
//
//  0 Nil           header only
//  1 Bool          u32 0 / 1 (decoders take any non-zero as true)
//  2 Int           i32; with FLAG_64 i64. Written as i32 unless the value needs 64 bits.
//  3 Float         f32; with FLAG_64 f64. Written as f32 when (double)(float)v == v (so 1.5 is f32, 0.1 and NaN are f64).
//  4 String        string
//  5 Vector2       2 x f32 (x, y)               [FLAG_64: f64 each; double-precision builds]
//  6 Vector2i      2 x i32
//  7 Rect2         4 x f32 (position.x, position.y, size.x, size.y)   [FLAG_64: f64]
//  8 Rect2i        4 x i32
//  9 Vector3       3 x f32                      [FLAG_64: f64]
// 10 Vector3i      3 x i32
// 11 Transform2D   6 x f32: columns x, y, origin (x.x, x.y, y.x, y.y, o.x, o.y)   [FLAG_64: f64]
// 12 Vector4       4 x f32                      [FLAG_64: f64]
// 13 Vector4i      4 x i32
// 14 Plane         4 x f32 (normal.x, normal.y, normal.z, d)   [FLAG_64: f64]
// 15 Quaternion    4 x f32 (x, y, z, w)         [FLAG_64: f64]
// 16 AABB          6 x f32 (position xyz, size xyz)   [FLAG_64: f64]
// 17 Basis         9 x f32 by ROWS: rows[0].xyz, rows[1].xyz, rows[2].xyz (GDScript Basis(x, y, z) takes columns)   [FLAG_64: f64]
// 18 Transform3D   12 x f32: basis rows (9), then origin xyz   [FLAG_64: f64]
// 19 Projection    16 x f32: columns x, y, z, w, each xyzw   [FLAG_64: f64]
// 20 Color         4 x f32 (r, g, b, a), f32 also in double-precision builds
// 21 StringName    string
// 22 NodePath      u32 name_count | 0x80000000, u32 subname_count, u32 flags (1 = absolute; 2 = obsolete: one more subname),
//                  then name_count + subname_count strings. The engine does NOT zero this padding (it is whatever was in
//                  memory); we write zeros. A header without bit 31 is the pre-3.0 format: refused (as by Godot 4).
// 23 RID, 24 Object, 25 Callable, 26 Signal: refused with VariantErrorCode.Unsupported (peer-local handles;
//                  var_to_bytes writes an Object as FLAG_64 | u64 instance id, a Callable as the header alone).
// 27 Dictionary    [key type][value type] u32 count (bit 31: obsolete "shared", ignored), then count x (key, value)
//                  in insertion order. A repeated key keeps its first position and takes the last value; a String and a
//                  StringName with the same text are the same key (as in the engine).
// 28 Array         [element type] u32 count (bit 31 ignored), then count values. Typed: every element must have the
//                  element type (the engine converts int/float and String/StringName and drops other mismatches with an
//                  error; it never writes them, and we refuse them).
// 29 PackedByteArray     u32 count, bytes, zero padding to 4 (a missing final padding at the very end is tolerated, as by the engine)
// 30 PackedInt32Array    u32 count, count x i32
// 31 PackedInt64Array    u32 count, count x i64
// 32 PackedFloat32Array  u32 count, count x f32
// 33 PackedFloat64Array  u32 count, count x f64
// 34 PackedStringArray   u32 count, count x string whose byte length INCLUDES a terminating NUL (written "abc\0" + pad)
// 35 PackedVector2Array  u32 count, count x 2 f32   [FLAG_64: f64]
// 36 PackedVector3Array  u32 count, count x 3 f32   [FLAG_64: f64]
// 37 PackedColorArray    u32 count, count x 4 f32
// 38 PackedVector4Array  u32 count, count x 4 f32   [FLAG_64: f64]
//
// Strings decode as the engine's parser does: a leading UTF-8 BOM is skipped, the string ends at the first NUL byte,
// invalid UTF-8 (also overlong forms and surrogates) is refused. Values with FLAG_64 math payloads are narrowed to
// float32, as a single-precision engine does. The encoder always writes the engine's canonical form.
//
// Decoding untrusted bytes never throws from TryDecode / TryDecodePrefix and never allocates more than a small multiple
// of the input: every count is checked against the bytes left before anything is allocated, nesting is limited
// (VariantDecodeOptions.MaxDepth), as are input size (MaxBytes) and the number of values (MaxValues). Stricter than the
// engine where it accepts what it never writes: unknown header bits, script-typed containers, mismatched elements of
// typed containers, and (Decode / TryDecode only) trailing bytes are errors.

using System.Buffers;
using System.Buffers.Binary;
using System.Collections.Immutable;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Unicode;

namespace Canopy.Variant;

/// <summary>Encodes and decodes Godot 4 Variant binary serialization (<c>var_to_bytes</c> / <c>bytes_to_var</c>). See the protocol comment at the top of this file.</summary>
public static class VariantCodec
{
    /// <summary>Deepest nesting the encoder writes: Godot's <c>Variant::MAX_RECURSION_DEPTH</c>; the engine refuses deeper input.</summary>
    public const int MaxEncodeDepth = 1024;

    internal const uint Flag64 = 1u << 16;
    private const int TypeCount = (int)VariantType.PackedVector4Array + 1;
    private const int DictionaryKeyShift = 16;
    private const int DictionaryValueShift = 18;
    private const int ArrayShift = 16;

    /// <summary>Encodes <paramref name="value"/> exactly as Godot 4.6's <c>var_to_bytes</c> does (except NodePath padding: zeros here).</summary>
    /// <exception cref="VariantEncodeException">The value cannot be sent intact (see the exception).</exception>
    public static byte[] Encode(GodotVariant value)
    {
        var output = new ArrayBufferWriter<byte>(64);
        Encode(value, output);
        return output.WrittenSpan.ToArray();
    }

    /// <summary>Appends the encoding of <paramref name="value"/> to <paramref name="output"/>. After an exception the output may hold part of it.</summary>
    /// <exception cref="VariantEncodeException">The value cannot be sent intact (see the exception).</exception>
    public static void Encode(GodotVariant value, IBufferWriter<byte> output)
    {
        ArgumentNullException.ThrowIfNull(value);
        ArgumentNullException.ThrowIfNull(output);
        new Encoder(output, null).Write(value, 0);
    }

    /// <summary>Test hook: encodes and reports where NodePath padding is (offset, length), the bytes the engine leaves unzeroed.</summary>
    internal static byte[] Encode(GodotVariant value, List<(int Offset, int Length)> nodePathPadding)
    {
        var output = new ArrayBufferWriter<byte>(64);
        new Encoder(output, nodePathPadding).Write(value, 0);
        return output.WrittenSpan.ToArray();
    }

    /// <summary>Decodes exactly one value that fills <paramref name="data"/>.</summary>
    /// <exception cref="VariantFormatException">The bytes are not a valid, supported encoding (the only exception thrown).</exception>
    public static GodotVariant Decode(ReadOnlySpan<byte> data, VariantDecodeOptions? options = null) =>
        TryDecode(data, out var value, out var error, options) ? value : throw new VariantFormatException(error);

    /// <summary>Decodes exactly one value that fills <paramref name="data"/>; never throws.</summary>
    public static bool TryDecode(
        ReadOnlySpan<byte> data,
        [NotNullWhen(true)] out GodotVariant? value,
        [NotNullWhen(false)] out VariantDecodeError? error,
        VariantDecodeOptions? options = null)
    {
        if (!TryDecodePrefix(data, out value, out var used, out error, options))
        {
            return false;
        }

        if (used != data.Length)
        {
            value = null;
            error = new VariantDecodeError(VariantErrorCode.TrailingBytes, used, $"{data.Length - used} bytes follow the value");
            return false;
        }

        return true;
    }

    /// <summary>
    /// Decodes the value at the start of <paramref name="data"/> and reports how many bytes it used; what follows is
    /// ignored (the engine's <c>bytes_to_var</c> behaviour). Never throws.
    /// </summary>
    public static bool TryDecodePrefix(
        ReadOnlySpan<byte> data,
        [NotNullWhen(true)] out GodotVariant? value,
        out int bytesRead,
        [NotNullWhen(false)] out VariantDecodeError? error,
        VariantDecodeOptions? options = null)
    {
        options ??= VariantDecodeOptions.Default;
        value = null;
        bytesRead = 0;
        if (data.Length > options.MaxBytes)
        {
            error = new VariantDecodeError(VariantErrorCode.TooLarge, 0, $"input of {data.Length} bytes is over the limit of {options.MaxBytes}");
            return false;
        }

        var decoder = new Decoder(data, options);
        if (!decoder.ReadValue(0, out var v))
        {
            error = decoder.Error!;
            return false;
        }

        value = v;
        bytesRead = decoder.Position;
        error = null;
        return true;
    }

    private static uint AllowedFlags(VariantType type) => type switch
    {
        VariantType.Int or VariantType.Float or VariantType.Vector2 or VariantType.Rect2 or VariantType.Vector3
            or VariantType.Transform2D or VariantType.Vector4 or VariantType.Plane or VariantType.Quaternion
            or VariantType.Aabb or VariantType.Basis or VariantType.Transform3D or VariantType.Projection
            or VariantType.PackedVector2Array or VariantType.PackedVector3Array or VariantType.PackedVector4Array => Flag64,
        VariantType.Array => 0x3u << ArrayShift,
        VariantType.Dictionary => (0x3u << DictionaryKeyShift) | (0x3u << DictionaryValueShift),
        _ => 0,
    };

    private static uint ContainerKind(ContainerType type) =>
        !type.IsTyped ? 0u : type.ClassName is not null ? 2u : 1u;

    private sealed class Encoder(IBufferWriter<byte> output, List<(int Offset, int Length)>? paddingLog)
    {
        private long written;

        public void Write(GodotVariant value, int depth)
        {
            if (depth > MaxEncodeDepth)
            {
                throw new VariantEncodeException($"containers nested deeper than {MaxEncodeDepth} levels (Godot refuses them)");
            }

            switch (value)
            {
                case VariantNil:
                    U32((uint)VariantType.Nil);
                    break;
                case VariantBool b:
                    U32((uint)VariantType.Bool);
                    U32(b.Value ? 1u : 0u);
                    break;
                case VariantInt i:
                    if (i.Value is >= int.MinValue and <= int.MaxValue)
                    {
                        U32((uint)VariantType.Int);
                        U32((uint)(int)i.Value);
                    }
                    else
                    {
                        U32((uint)VariantType.Int | Flag64);
                        U64((ulong)i.Value);
                    }

                    break;
                case VariantFloat f:
                    var narrow = (float)f.Value;
                    if ((double)narrow == f.Value)
                    {
                        U32((uint)VariantType.Float);
                        F32(narrow);
                    }
                    else
                    {
                        U32((uint)VariantType.Float | Flag64);
                        F64(f.Value);
                    }

                    break;
                case VariantString s:
                    U32((uint)VariantType.String);
                    Str(s.Value, nulTerminated: false, logPadding: false);
                    break;
                case VariantStringName sn:
                    U32((uint)VariantType.StringName);
                    Str(sn.Value, nulTerminated: false, logPadding: false);
                    break;
                case VariantNodePath np:
                    U32((uint)VariantType.NodePath);
                    U32((uint)np.Value.Names.Length | 0x8000_0000u);
                    U32((uint)np.Value.SubNames.Length);
                    U32(np.Value.IsAbsolute ? 1u : 0u);
                    foreach (var n in np.Value.Names)
                    {
                        Str(n, nulTerminated: false, logPadding: true);
                    }

                    foreach (var n in np.Value.SubNames)
                    {
                        Str(n, nulTerminated: false, logPadding: true);
                    }

                    break;
                case VariantVector2 v:
                    U32((uint)VariantType.Vector2);
                    V2(v.Value);
                    break;
                case VariantVector2I v:
                    U32((uint)VariantType.Vector2I);
                    I32(v.Value.X);
                    I32(v.Value.Y);
                    break;
                case VariantRect2 v:
                    U32((uint)VariantType.Rect2);
                    V2(v.Value.Position);
                    V2(v.Value.Size);
                    break;
                case VariantRect2I v:
                    U32((uint)VariantType.Rect2I);
                    I32(v.Value.Position.X);
                    I32(v.Value.Position.Y);
                    I32(v.Value.Size.X);
                    I32(v.Value.Size.Y);
                    break;
                case VariantVector3 v:
                    U32((uint)VariantType.Vector3);
                    V3(v.Value);
                    break;
                case VariantVector3I v:
                    U32((uint)VariantType.Vector3I);
                    I32(v.Value.X);
                    I32(v.Value.Y);
                    I32(v.Value.Z);
                    break;
                case VariantTransform2D v:
                    U32((uint)VariantType.Transform2D);
                    V2(v.Value.X);
                    V2(v.Value.Y);
                    V2(v.Value.Origin);
                    break;
                case VariantVector4 v:
                    U32((uint)VariantType.Vector4);
                    V4(v.Value);
                    break;
                case VariantVector4I v:
                    U32((uint)VariantType.Vector4I);
                    I32(v.Value.X);
                    I32(v.Value.Y);
                    I32(v.Value.Z);
                    I32(v.Value.W);
                    break;
                case VariantPlane v:
                    U32((uint)VariantType.Plane);
                    V3(v.Value.Normal);
                    F32(v.Value.D);
                    break;
                case VariantQuaternion v:
                    U32((uint)VariantType.Quaternion);
                    F32(v.Value.X);
                    F32(v.Value.Y);
                    F32(v.Value.Z);
                    F32(v.Value.W);
                    break;
                case VariantAabb v:
                    U32((uint)VariantType.Aabb);
                    V3(v.Value.Position);
                    V3(v.Value.Size);
                    break;
                case VariantBasis v:
                    U32((uint)VariantType.Basis);
                    Basis(v.Value);
                    break;
                case VariantTransform3D v:
                    U32((uint)VariantType.Transform3D);
                    Basis(v.Value.Basis);
                    V3(v.Value.Origin);
                    break;
                case VariantProjection v:
                    U32((uint)VariantType.Projection);
                    V4(v.Value.X);
                    V4(v.Value.Y);
                    V4(v.Value.Z);
                    V4(v.Value.W);
                    break;
                case VariantColor v:
                    U32((uint)VariantType.Color);
                    F32(v.Value.R);
                    F32(v.Value.G);
                    F32(v.Value.B);
                    F32(v.Value.A);
                    break;
                case VariantDictionary d:
                    U32((uint)VariantType.Dictionary | (ContainerKind(d.KeyType) << DictionaryKeyShift) | (ContainerKind(d.ValueType) << DictionaryValueShift));
                    ContainerTypeInfo(d.KeyType);
                    ContainerTypeInfo(d.ValueType);
                    U32((uint)d.Count);
                    foreach (var (k, val) in d.Entries)
                    {
                        Write(k, depth + 1);
                        Write(val, depth + 1);
                    }

                    break;
                case VariantArray a:
                    U32((uint)VariantType.Array | (ContainerKind(a.ElementType) << ArrayShift));
                    ContainerTypeInfo(a.ElementType);
                    U32((uint)a.Count);
                    foreach (var item in a.Items)
                    {
                        Write(item, depth + 1);
                    }

                    break;
                case PackedByteArray p:
                    U32((uint)VariantType.PackedByteArray);
                    U32((uint)p.Count);
                    Bytes(p.Items.AsSpan());
                    Zeros((4 - (p.Count % 4)) % 4);
                    break;
                case PackedInt32Array p:
                    U32((uint)VariantType.PackedInt32Array);
                    U32((uint)p.Count);
                    foreach (var x in p.Items)
                    {
                        I32(x);
                    }

                    break;
                case PackedInt64Array p:
                    U32((uint)VariantType.PackedInt64Array);
                    U32((uint)p.Count);
                    foreach (var x in p.Items)
                    {
                        U64((ulong)x);
                    }

                    break;
                case PackedFloat32Array p:
                    U32((uint)VariantType.PackedFloat32Array);
                    U32((uint)p.Count);
                    foreach (var x in p.Items)
                    {
                        F32(x);
                    }

                    break;
                case PackedFloat64Array p:
                    U32((uint)VariantType.PackedFloat64Array);
                    U32((uint)p.Count);
                    foreach (var x in p.Items)
                    {
                        F64(x);
                    }

                    break;
                case PackedStringArray p:
                    U32((uint)VariantType.PackedStringArray);
                    U32((uint)p.Count);
                    foreach (var x in p.Items)
                    {
                        Str(x, nulTerminated: true, logPadding: false);
                    }

                    break;
                case PackedVector2Array p:
                    U32((uint)VariantType.PackedVector2Array);
                    U32((uint)p.Count);
                    foreach (var x in p.Items)
                    {
                        V2(x);
                    }

                    break;
                case PackedVector3Array p:
                    U32((uint)VariantType.PackedVector3Array);
                    U32((uint)p.Count);
                    foreach (var x in p.Items)
                    {
                        V3(x);
                    }

                    break;
                case PackedColorArray p:
                    U32((uint)VariantType.PackedColorArray);
                    U32((uint)p.Count);
                    foreach (var x in p.Items)
                    {
                        F32(x.R);
                        F32(x.G);
                        F32(x.B);
                        F32(x.A);
                    }

                    break;
                case PackedVector4Array p:
                    U32((uint)VariantType.PackedVector4Array);
                    U32((uint)p.Count);
                    foreach (var x in p.Items)
                    {
                        V4(x);
                    }

                    break;
                default:
                    // Unreachable: the set of GodotVariant subclasses is closed (private protected constructors).
                    throw new VariantEncodeException($"unsupported variant {value.GetType().Name}");
            }
        }

        private void ContainerTypeInfo(ContainerType type)
        {
            switch (ContainerKind(type))
            {
                case 1:
                    U32((uint)type.BuiltinType);
                    break;
                case 2:
                    Str(type.ClassName!, nulTerminated: false, logPadding: false);
                    break;
            }
        }

        private void Basis(Basis b)
        {
            V3(b.Row0);
            V3(b.Row1);
            V3(b.Row2);
        }

        private void V2(Vector2 v)
        {
            F32(v.X);
            F32(v.Y);
        }

        private void V3(Vector3 v)
        {
            F32(v.X);
            F32(v.Y);
            F32(v.Z);
        }

        private void V4(Vector4 v)
        {
            F32(v.X);
            F32(v.Y);
            F32(v.Z);
            F32(v.W);
        }

        private void Str(string s, bool nulTerminated, bool logPadding)
        {
            if (s.Contains('\0', StringComparison.Ordinal))
            {
                throw new VariantEncodeException("a string with a NUL character (Godot strings end at NUL)");
            }

            if (s.Length > 0 && s[0] == '\uFEFF')
            {
                throw new VariantEncodeException("a string that starts with U+FEFF (Godot's decoder drops it as a byte order mark)");
            }

            var max = Encoding.UTF8.GetMaxByteCount(s.Length) + 1;
            var span = output.GetSpan(4 + max + 3);
            var status = Utf8.FromUtf16(s, span[4..], out _, out var n, replaceInvalidSequences: false);
            if (status != OperationStatus.Done)
            {
                throw new VariantEncodeException("a string that is not valid UTF-16 (lone surrogate)");
            }

            if (nulTerminated)
            {
                span[4 + n] = 0;
                n++;
            }

            var pad = (4 - (n % 4)) % 4;
            BinaryPrimitives.WriteUInt32LittleEndian(span, (uint)n);
            span.Slice(4 + n, pad).Clear();
            if (logPadding && pad > 0 && paddingLog is not null)
            {
                paddingLog.Add(((int)(written + 4 + n), pad));
            }

            Advance(4 + n + pad);
        }

        private void Bytes(ReadOnlySpan<byte> bytes)
        {
            // In slices, so a buffer writer with a small span size still works.
            while (!bytes.IsEmpty)
            {
                var span = output.GetSpan(Math.Min(bytes.Length, 64 * 1024));
                var n = Math.Min(span.Length, bytes.Length);
                bytes[..n].CopyTo(span);
                Advance(n);
                bytes = bytes[n..];
            }
        }

        private void Zeros(int count)
        {
            if (count > 0)
            {
                output.GetSpan(count)[..count].Clear();
                Advance(count);
            }
        }

        private void U32(uint v)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(output.GetSpan(4), v);
            Advance(4);
        }

        private void I32(int v) => U32((uint)v);

        private void U64(ulong v)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(output.GetSpan(8), v);
            Advance(8);
        }

        private void F32(float v)
        {
            BinaryPrimitives.WriteSingleLittleEndian(output.GetSpan(4), v);
            Advance(4);
        }

        private void F64(double v)
        {
            BinaryPrimitives.WriteDoubleLittleEndian(output.GetSpan(8), v);
            Advance(8);
        }

        private void Advance(int n)
        {
            output.Advance(n);
            written += n;
            if (written > int.MaxValue)
            {
                throw new VariantEncodeException("the encoding would be 2 GiB or more (Godot lengths are 32-bit)");
            }
        }
    }

    private ref struct Decoder
    {
        private readonly ReadOnlySpan<byte> data;
        private readonly VariantDecodeOptions options;
        private int values;

        public Decoder(ReadOnlySpan<byte> data, VariantDecodeOptions options)
        {
            this.data = data;
            this.options = options;
        }

        public int Position { get; private set; }

        public VariantDecodeError? Error { get; private set; }

        private readonly int Remaining => data.Length - Position;

        public bool ReadValue(int depth, [NotNullWhen(true)] out GodotVariant? value)
        {
            value = null;
            var start = Position;
            if (depth > options.MaxDepth)
            {
                return Fail(VariantErrorCode.TooDeep, start, $"values nested deeper than {options.MaxDepth} levels");
            }

            if (++values > options.MaxValues)
            {
                return Fail(VariantErrorCode.TooLarge, start, $"more than {options.MaxValues} values");
            }

            if (!U32(out var header, "value header"))
            {
                return false;
            }

            var typeByte = header & 0xFF;
            if (typeByte >= TypeCount)
            {
                return Fail(VariantErrorCode.UnknownType, start, $"type {typeByte} is not a Godot 4 Variant type (0..{TypeCount - 1})");
            }

            var type = (VariantType)typeByte;
            switch (type)
            {
                case VariantType.Rid:
                    return Fail(VariantErrorCode.Unsupported, start, "RID values are not supported (they are handles local to one engine)");
                case VariantType.Object:
                    return Fail(VariantErrorCode.Unsupported, start, "Object values are not supported (neither object ids nor full objects)");
                case VariantType.Callable:
                    return Fail(VariantErrorCode.Unsupported, start, "Callable values are not supported");
                case VariantType.Signal:
                    return Fail(VariantErrorCode.Unsupported, start, "Signal values are not supported");
            }

            var flags = header & ~0xFFu;
            if ((flags & ~AllowedFlags(type)) != 0)
            {
                return Fail(VariantErrorCode.InvalidHeader, start, $"header 0x{header:x8}: bits 0x{flags & ~AllowedFlags(type):x8} are not used by {type}");
            }

            var wide = (flags & Flag64) != 0;
            switch (type)
            {
                case VariantType.Nil:
                    value = GodotVariant.Nil;
                    return true;
                case VariantType.Bool:
                    if (!U32(out var b, "Bool"))
                    {
                        return false;
                    }

                    value = b != 0 ? VariantBool.True : VariantBool.False;
                    return true;
                case VariantType.Int:
                    if (wide)
                    {
                        if (!U64(out var l, "Int"))
                        {
                            return false;
                        }

                        value = new VariantInt((long)l);
                    }
                    else
                    {
                        if (!U32(out var i, "Int"))
                        {
                            return false;
                        }

                        value = new VariantInt((int)i);
                    }

                    return true;
                case VariantType.Float:
                    if (wide)
                    {
                        if (!Need(8, "Float"))
                        {
                            return false;
                        }

                        value = new VariantFloat(BinaryPrimitives.ReadDoubleLittleEndian(data[Position..]));
                        Position += 8;
                    }
                    else
                    {
                        if (!Need(4, "Float"))
                        {
                            return false;
                        }

                        value = new VariantFloat(BinaryPrimitives.ReadSingleLittleEndian(data[Position..]));
                        Position += 4;
                    }

                    return true;
                case VariantType.String:
                    if (!Str(out var s, "String"))
                    {
                        return false;
                    }

                    value = new VariantString(s);
                    return true;
                case VariantType.StringName:
                    if (!Str(out var sn, "StringName"))
                    {
                        return false;
                    }

                    value = new VariantStringName(sn);
                    return true;
                case VariantType.NodePath:
                    return NodePath(start, out value);
                case VariantType.Vector2:
                case VariantType.Rect2:
                case VariantType.Vector3:
                case VariantType.Transform2D:
                case VariantType.Vector4:
                case VariantType.Plane:
                case VariantType.Quaternion:
                case VariantType.Aabb:
                case VariantType.Basis:
                case VariantType.Transform3D:
                case VariantType.Projection:
                case VariantType.Color:
                    return MathValue(type, wide, out value);
                case VariantType.Vector2I:
                case VariantType.Rect2I:
                case VariantType.Vector3I:
                case VariantType.Vector4I:
                    return Ints(type, out value);
                case VariantType.Dictionary:
                    return Dictionary(header, depth, out value);
                case VariantType.Array:
                    return Array(header, depth, out value);
                default:
                    return Packed(type, wide, out value);
            }
        }

        // The float math types; apart from ReadValue so its recursive frames do not carry this buffer.
        private bool MathValue(VariantType type, bool wide, [NotNullWhen(true)] out GodotVariant? value)
        {
            value = null;
            Span<float> r = stackalloc float[16];
            switch (type)
            {
                case VariantType.Vector2:
                    if (!Reals(r[..2], wide, "Vector2"))
                    {
                        return false;
                    }

                    value = new VariantVector2(new Vector2(r[0], r[1]));
                    return true;
                case VariantType.Rect2:
                    if (!Reals(r[..4], wide, "Rect2"))
                    {
                        return false;
                    }

                    value = new VariantRect2(new Rect2(r[0], r[1], r[2], r[3]));
                    return true;
                case VariantType.Vector3:
                    if (!Reals(r[..3], wide, "Vector3"))
                    {
                        return false;
                    }

                    value = new VariantVector3(new Vector3(r[0], r[1], r[2]));
                    return true;
                case VariantType.Transform2D:
                    if (!Reals(r[..6], wide, "Transform2D"))
                    {
                        return false;
                    }

                    value = new VariantTransform2D(new Transform2D(new Vector2(r[0], r[1]), new Vector2(r[2], r[3]), new Vector2(r[4], r[5])));
                    return true;
                case VariantType.Vector4:
                    if (!Reals(r[..4], wide, "Vector4"))
                    {
                        return false;
                    }

                    value = new VariantVector4(new Vector4(r[0], r[1], r[2], r[3]));
                    return true;
                case VariantType.Plane:
                    if (!Reals(r[..4], wide, "Plane"))
                    {
                        return false;
                    }

                    value = new VariantPlane(new Plane(new Vector3(r[0], r[1], r[2]), r[3]));
                    return true;
                case VariantType.Quaternion:
                    if (!Reals(r[..4], wide, "Quaternion"))
                    {
                        return false;
                    }

                    value = new VariantQuaternion(new Quaternion(r[0], r[1], r[2], r[3]));
                    return true;
                case VariantType.Aabb:
                    if (!Reals(r[..6], wide, "AABB"))
                    {
                        return false;
                    }

                    value = new VariantAabb(new Aabb(new Vector3(r[0], r[1], r[2]), new Vector3(r[3], r[4], r[5])));
                    return true;
                case VariantType.Basis:
                    if (!Reals(r[..9], wide, "Basis"))
                    {
                        return false;
                    }

                    value = new VariantBasis(BasisOf(r));
                    return true;
                case VariantType.Transform3D:
                    if (!Reals(r[..12], wide, "Transform3D"))
                    {
                        return false;
                    }

                    value = new VariantTransform3D(new Transform3D(BasisOf(r), new Vector3(r[9], r[10], r[11])));
                    return true;
                case VariantType.Projection:
                    if (!Reals(r[..16], wide, "Projection"))
                    {
                        return false;
                    }

                    value = new VariantProjection(new Projection(
                        new Vector4(r[0], r[1], r[2], r[3]),
                        new Vector4(r[4], r[5], r[6], r[7]),
                        new Vector4(r[8], r[9], r[10], r[11]),
                        new Vector4(r[12], r[13], r[14], r[15])));
                    return true;
                case VariantType.Color:
                    if (!Reals(r[..4], false, "Color"))
                    {
                        return false;
                    }

                    value = new VariantColor(new Color(r[0], r[1], r[2], r[3]));
                    return true;
                default:
                    throw new InvalidOperationException($"not a float math type: {type}");
            }
        }

        private static int InitialCapacity(uint count) => (int)Math.Min(count, 16u);

        private static Basis BasisOf(ReadOnlySpan<float> r) =>
            new(new Vector3(r[0], r[1], r[2]), new Vector3(r[3], r[4], r[5]), new Vector3(r[6], r[7], r[8]));

        private bool Ints(VariantType type, [NotNullWhen(true)] out GodotVariant? value)
        {
            value = null;
            var n = type switch { VariantType.Vector2I => 2, VariantType.Vector3I => 3, _ => 4 };
            if (!Need(4 * n, type.ToString()))
            {
                return false;
            }

            Span<int> v = stackalloc int[4];
            for (var k = 0; k < n; k++)
            {
                v[k] = BinaryPrimitives.ReadInt32LittleEndian(data[(Position + (4 * k))..]);
            }

            Position += 4 * n;
            value = type switch
            {
                VariantType.Vector2I => new VariantVector2I(new Vector2I(v[0], v[1])),
                VariantType.Vector3I => new VariantVector3I(new Vector3I(v[0], v[1], v[2])),
                VariantType.Rect2I => new VariantRect2I(new Rect2I(v[0], v[1], v[2], v[3])),
                _ => new VariantVector4I(new Vector4I(v[0], v[1], v[2], v[3])),
            };
            return true;
        }

        private bool NodePath(int start, [NotNullWhen(true)] out GodotVariant? value)
        {
            value = null;
            if (!Need(4, "NodePath"))
            {
                return false;
            }

            var rawNames = BinaryPrimitives.ReadUInt32LittleEndian(data[Position..]);
            if ((rawNames & 0x8000_0000u) == 0)
            {
                return Fail(VariantErrorCode.InvalidNodePath, start, "NodePath in the old (pre-3.0) string format");
            }

            if (!Need(12, "NodePath"))
            {
                return false;
            }

            long nameCount = rawNames & 0x7FFF_FFFFu;
            long subCount = BinaryPrimitives.ReadUInt32LittleEndian(data[(Position + 4)..]);
            var npFlags = BinaryPrimitives.ReadUInt32LittleEndian(data[(Position + 8)..]);
            if ((npFlags & ~3u) != 0)
            {
                return Fail(VariantErrorCode.InvalidNodePath, Position + 8, $"unknown NodePath flags 0x{npFlags:x}");
            }

            Position += 12;
            if ((npFlags & 2) != 0)
            {
                subCount++; // Obsolete format: the property was counted apart from the subnames.
            }

            if ((nameCount + subCount) * 4 > Remaining)
            {
                return Fail(VariantErrorCode.InvalidLength, start, $"NodePath of {nameCount} names and {subCount} subnames cannot fit in {Remaining} bytes");
            }

            var names = ImmutableArray.CreateBuilder<string>((int)nameCount);
            for (var k = 0; k < nameCount; k++)
            {
                if (!Str(out var s, "NodePath name"))
                {
                    return false;
                }

                names.Add(s);
            }

            var subs = ImmutableArray.CreateBuilder<string>((int)subCount);
            for (var k = 0; k < subCount; k++)
            {
                if (!Str(out var s, "NodePath subname"))
                {
                    return false;
                }

                subs.Add(s);
            }

            value = new VariantNodePath(new NodePath(names.MoveToImmutable(), subs.MoveToImmutable(), (npFlags & 1) != 0, trusted: true));
            return true;
        }

        private bool ContainerTypeOf(uint kind, string what, out ContainerType type)
        {
            type = ContainerType.None;
            var at = Position;
            switch (kind)
            {
                case 0:
                    return true;
                case 1:
                    if (!U32(out var builtin, what))
                    {
                        return false;
                    }

                    if (builtin >= TypeCount)
                    {
                        return Fail(VariantErrorCode.InvalidContainerType, at, $"{what}: {builtin} is not a Variant type");
                    }

                    type = builtin == 0 ? ContainerType.None : new ContainerType((VariantType)builtin);
                    return true;
                case 2:
                    if (!Str(out var className, what))
                    {
                        return false;
                    }

                    type = new ContainerType(VariantType.Object, className);
                    return true;
                default:
                    return Fail(VariantErrorCode.Unsupported, at, $"{what}: script-typed containers are not supported");
            }
        }

        private bool Array(uint header, int depth, [NotNullWhen(true)] out GodotVariant? value)
        {
            value = null;
            var start = Position - 4;
            if (!ContainerTypeOf((header >> ArrayShift) & 3, "Array element type", out var elementType))
            {
                return false;
            }

            if (!U32(out var rawCount, "Array size"))
            {
                return false;
            }

            var count = rawCount & 0x7FFF_FFFFu;
            if (count > Remaining / 4)
            {
                return Fail(VariantErrorCode.InvalidLength, start, $"Array of {count} values cannot fit in {Remaining} bytes");
            }

            if (count == 0)
            {
                value = elementType.IsTyped ? new VariantArray([], elementType, trusted: true) : VariantArray.Empty;
                return true;
            }

            // Capacity grows with what is actually decoded (doubling, up to the count): a claimed count only bounds the
            // loop. Preallocating it would let nested containers that each claim the whole rest of the input allocate
            // depth x input before failing.
            var items = new GodotVariant[InitialCapacity(count)];
            for (var k = 0; k < count; k++)
            {
                var at = Position;
                if (!ReadValue(depth + 1, out var item))
                {
                    return false;
                }

                if (!elementType.Admits(item))
                {
                    return Fail(VariantErrorCode.ContainerTypeMismatch, at, $"a {item.Type} in an Array[{elementType}]");
                }

                if (k == items.Length)
                {
                    System.Array.Resize(ref items, (int)Math.Min(2L * items.Length, count));
                }

                items[k] = item;
            }

            value = new VariantArray(ImmutableCollectionsMarshal.AsImmutableArray(items), elementType, trusted: true);
            return true;
        }

        private bool Dictionary(uint header, int depth, [NotNullWhen(true)] out GodotVariant? value)
        {
            value = null;
            var start = Position - 4;
            if (!ContainerTypeOf((header >> DictionaryKeyShift) & 3, "Dictionary key type", out var keyType)
                || !ContainerTypeOf((header >> DictionaryValueShift) & 3, "Dictionary value type", out var valueType))
            {
                return false;
            }

            if (!U32(out var rawCount, "Dictionary size"))
            {
                return false;
            }

            var count = rawCount & 0x7FFF_FFFFu;
            if (count > Remaining / 8)
            {
                return Fail(VariantErrorCode.InvalidLength, start, $"Dictionary of {count} entries cannot fit in {Remaining} bytes");
            }

            if (count == 0)
            {
                value = keyType.IsTyped || valueType.IsTyped ? new VariantDictionary([], keyType, valueType) : VariantDictionary.Empty;
                return true;
            }

            // As for arrays, the buffer grows with what is decoded, never from the claimed count alone.
            var entries = new VariantDictionary.Builder(InitialCapacity(count));
            for (var k = 0; k < count; k++)
            {
                var at = Position;
                if (!ReadValue(depth + 1, out var key))
                {
                    return false;
                }

                if (!keyType.Admits(key))
                {
                    return Fail(VariantErrorCode.ContainerTypeMismatch, at, $"a {key.Type} key in a Dictionary[{keyType}, {valueType}]");
                }

                at = Position;
                if (!ReadValue(depth + 1, out var item))
                {
                    return false;
                }

                if (!valueType.Admits(item))
                {
                    return Fail(VariantErrorCode.ContainerTypeMismatch, at, $"a {item.Type} value in a Dictionary[{keyType}, {valueType}]");
                }

                entries.Put(key, item, (int)count);
            }

            value = new VariantDictionary(entries.ToImmutable(), keyType, valueType);
            return true;
        }

        private bool Packed(VariantType type, bool wide, [NotNullWhen(true)] out GodotVariant? value)
        {
            value = null;
            var start = Position - 4;
            if (!U32(out var rawCount, $"{type} size"))
            {
                return false;
            }

            if (rawCount > int.MaxValue)
            {
                return Fail(VariantErrorCode.InvalidLength, start, $"{type} of negative size {(int)rawCount}");
            }

            var count = (int)rawCount;
            if (type == VariantType.PackedStringArray)
            {
                if (count > Remaining / 4)
                {
                    return Fail(VariantErrorCode.InvalidLength, start, $"{type} of {count} strings cannot fit in {Remaining} bytes");
                }

                var strings = ImmutableArray.CreateBuilder<string>(count);
                for (var k = 0; k < count; k++)
                {
                    if (!Str(out var s, "PackedStringArray item"))
                    {
                        return false;
                    }

                    strings.Add(s);
                }

                value = PackedStringArray.Of(strings.MoveToImmutable());
                return true;
            }

            var real = wide ? 8 : 4;
            var itemSize = type switch
            {
                VariantType.PackedByteArray => 1,
                VariantType.PackedInt32Array or VariantType.PackedFloat32Array => 4,
                VariantType.PackedInt64Array or VariantType.PackedFloat64Array => 8,
                VariantType.PackedVector2Array => 2 * real,
                VariantType.PackedVector3Array => 3 * real,
                VariantType.PackedColorArray => 16,
                _ => 4 * real, // PackedVector4Array
            };
            if ((long)count * itemSize > Remaining)
            {
                return Fail(VariantErrorCode.InvalidLength, start, $"{type} of {count} items cannot fit in {Remaining} bytes");
            }

            var bytes = data.Slice(Position, count * itemSize);
            Position += bytes.Length;
            switch (type)
            {
                case VariantType.PackedByteArray:
                    // The engine reports the padding as read even when the input ends before it; so do we.
                    Position += Math.Min((4 - (count % 4)) % 4, Remaining);
                    value = PackedByteArray.Of(ImmutableArray.Create(bytes));
                    return true;
                case VariantType.PackedInt32Array:
                    value = PackedInt32Array.Of(Build(bytes, count, static (b, k) => BinaryPrimitives.ReadInt32LittleEndian(b[(4 * k)..])));
                    return true;
                case VariantType.PackedInt64Array:
                    value = PackedInt64Array.Of(Build(bytes, count, static (b, k) => BinaryPrimitives.ReadInt64LittleEndian(b[(8 * k)..])));
                    return true;
                case VariantType.PackedFloat32Array:
                    value = PackedFloat32Array.Of(Build(bytes, count, static (b, k) => BinaryPrimitives.ReadSingleLittleEndian(b[(4 * k)..])));
                    return true;
                case VariantType.PackedFloat64Array:
                    value = PackedFloat64Array.Of(Build(bytes, count, static (b, k) => BinaryPrimitives.ReadDoubleLittleEndian(b[(8 * k)..])));
                    return true;
                case VariantType.PackedColorArray:
                    value = PackedColorArray.Of(Build(bytes, count, static (b, k) => new Color(R(b, 4 * k, 0, false), R(b, 4 * k, 1, false), R(b, 4 * k, 2, false), R(b, 4 * k, 3, false))));
                    return true;
                case VariantType.PackedVector2Array:
                    value = wide
                        ? PackedVector2Array.Of(Build(bytes, count, static (b, k) => new Vector2(R(b, 2 * k, 0, true), R(b, 2 * k, 1, true))))
                        : PackedVector2Array.Of(Build(bytes, count, static (b, k) => new Vector2(R(b, 2 * k, 0, false), R(b, 2 * k, 1, false))));
                    return true;
                case VariantType.PackedVector3Array:
                    value = wide
                        ? PackedVector3Array.Of(Build(bytes, count, static (b, k) => new Vector3(R(b, 3 * k, 0, true), R(b, 3 * k, 1, true), R(b, 3 * k, 2, true))))
                        : PackedVector3Array.Of(Build(bytes, count, static (b, k) => new Vector3(R(b, 3 * k, 0, false), R(b, 3 * k, 1, false), R(b, 3 * k, 2, false))));
                    return true;
                default:
                    value = wide
                        ? PackedVector4Array.Of(Build(bytes, count, static (b, k) => new Vector4(R(b, 4 * k, 0, true), R(b, 4 * k, 1, true), R(b, 4 * k, 2, true), R(b, 4 * k, 3, true))))
                        : PackedVector4Array.Of(Build(bytes, count, static (b, k) => new Vector4(R(b, 4 * k, 0, false), R(b, 4 * k, 1, false), R(b, 4 * k, 2, false), R(b, 4 * k, 3, false))));
                    return true;
            }
        }

        private delegate T ItemReader<T>(ReadOnlySpan<byte> bytes, int index);

        private static ImmutableArray<T> Build<T>(ReadOnlySpan<byte> bytes, int count, ItemReader<T> read)
        {
            var builder = ImmutableArray.CreateBuilder<T>(count);
            for (var k = 0; k < count; k++)
            {
                builder.Add(read(bytes, k));
            }

            return builder.MoveToImmutable();
        }

        // Component c of the item whose first component is number `first`: f32, or f64 narrowed to f32.
        private static float R(ReadOnlySpan<byte> b, int first, int c, bool wide) => wide
            ? (float)BinaryPrimitives.ReadDoubleLittleEndian(b[(8 * (first + c))..])
            : BinaryPrimitives.ReadSingleLittleEndian(b[(4 * (first + c))..]);

        private bool Reals(scoped Span<float> into, bool wide, string what)
        {
            if (!Need(into.Length * (wide ? 8 : 4), what))
            {
                return false;
            }

            for (var k = 0; k < into.Length; k++)
            {
                into[k] = R(data[Position..], 0, k, wide);
            }

            Position += into.Length * (wide ? 8 : 4);
            return true;
        }

        private bool Str(out string value, string what)
        {
            value = string.Empty;
            var at = Position;
            if (!U32(out var rawLength, $"{what} length"))
            {
                return false;
            }

            if (rawLength > int.MaxValue)
            {
                return Fail(VariantErrorCode.InvalidLength, at, $"{what} of negative length {(int)rawLength}");
            }

            var length = (int)rawLength;
            var padded = (long)length + ((4 - (length % 4)) % 4);
            if (padded > Remaining)
            {
                return Fail(VariantErrorCode.InvalidLength, at, $"{what} of {length} bytes (padded {padded}) but {Remaining} bytes left");
            }

            var bytes = data.Slice(Position, length);
            Position += (int)padded;

            // As Godot's UTF-8 parser: skip a BOM, stop at the first NUL, refuse anything that is not valid UTF-8.
            if (bytes.Length >= 3 && bytes[0] == 0xEF && bytes[1] == 0xBB && bytes[2] == 0xBF)
            {
                bytes = bytes[3..];
            }

            var nul = bytes.IndexOf((byte)0);
            if (nul >= 0)
            {
                bytes = bytes[..nul];
            }

            if (!Utf8.IsValid(bytes))
            {
                return Fail(VariantErrorCode.InvalidUtf8, at, $"{what} is not valid UTF-8");
            }

            value = Encoding.UTF8.GetString(bytes);
            return true;
        }

        private bool Need(int bytes, string what) =>
            Remaining >= bytes || Fail(VariantErrorCode.Truncated, Position, $"{what}: {bytes} bytes needed, {Remaining} left");

        private bool U32(out uint v, string what)
        {
            if (!Need(4, what))
            {
                v = 0;
                return false;
            }

            v = BinaryPrimitives.ReadUInt32LittleEndian(data[Position..]);
            Position += 4;
            return true;
        }

        private bool U64(out ulong v, string what)
        {
            if (!Need(8, what))
            {
                v = 0;
                return false;
            }

            v = BinaryPrimitives.ReadUInt64LittleEndian(data[Position..]);
            Position += 8;
            return true;
        }

        private bool Fail(VariantErrorCode code, int offset, string message)
        {
            Error = new VariantDecodeError(code, offset, message);
            return false;
        }
    }
}
