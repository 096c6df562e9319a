// The one UTF-8 encoder the codec, the core and the driver share.
export const utf8 = new TextEncoder();
