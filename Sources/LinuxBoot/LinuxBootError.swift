import GuestMemory

/// What stopped a Linux boot from being prepared, and what to do about it.
public enum LinuxBootError: Error, Equatable, CustomStringConvertible {
    case notAKernel(String)
    case protocolTooOld(version: UInt16, minimum: UInt16)
    case not64Bit(String)
    case unsupportedELF(String)
    case commandLineTooLong(length: Int, maximum: Int)
    case commandLineHasNUL
    case doesNotFit(needed: UInt64, available: UInt64, what: String)
    case memory(GuestMemoryError)

    public var description: String {
        switch self {
        case .notAKernel(let why):
            "not a Linux kernel image: \(why)"
        case .protocolTooOld(let version, let minimum):
            "the kernel speaks boot protocol \(version >> 8).\(version & 0xff); at least "
                + "\(minimum >> 8).\(minimum & 0xff) is needed (a 64-bit entry point); use a newer kernel"
        case .not64Bit(let why):
            "the kernel has no 64-bit entry point: \(why)"
        case .unsupportedELF(let why):
            "unsupported ELF kernel: \(why); an x86-64 ELF executable (vmlinux) is needed"
        case .commandLineTooLong(let length, let maximum):
            "the kernel command line is \(length) bytes; this kernel accepts at most \(maximum)"
        case .commandLineHasNUL:
            "the kernel command line contains a NUL byte, which would end it early"
        case .doesNotFit(let needed, let available, let what):
            "\(what) needs \(needed) bytes (\(needed.mebibytesRoundedUp) MiB) of guest memory, "
                + "but the machine has \(available) (\(available / (1 << 20)) MiB); give the machine more memory"
        case .memory(let error):
            "writing guest memory: \(error)"
        }
    }
}

extension UInt64 {
    var mebibytesRoundedUp: UInt64 { (self + (1 << 20) - 1) >> 20 }
}
