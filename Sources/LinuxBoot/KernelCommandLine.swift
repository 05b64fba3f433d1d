/// A kernel command line, built from parameters and checked against the
/// length the kernel accepts (`cmdline_size`, NUL excluded).
public struct KernelCommandLine: Sendable, Equatable, CustomStringConvertible {
    public let maximumLength: Int
    public private(set) var description: String = ""

    public init(maximumLength: Int) {
        self.maximumLength = maximumLength
    }

    public init(_ text: String, maximumLength: Int) throws(LinuxBootError) {
        self.init(maximumLength: maximumLength)
        if !text.isEmpty { try append(text) }
    }

    /// Adds `parameter` (e.g. `console=ttyS0`), separated by a space.
    public mutating func append(_ parameter: String) throws(LinuxBootError) {
        guard !parameter.utf8.contains(0) else { throw .commandLineHasNUL }
        let joined = description.isEmpty ? parameter : description + " " + parameter
        guard joined.utf8.count <= maximumLength else {
            throw .commandLineTooLong(length: joined.utf8.count, maximum: maximumLength)
        }
        description = joined
    }

    /// The bytes written to guest memory, with the terminating NUL.
    public var bytes: [UInt8] { Array(description.utf8) + [0] }
}
