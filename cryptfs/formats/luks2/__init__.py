"""LUKS2, in one folder as cryptsetup keeps it: the header (:mod:`.header`: read, unlock,
create, change), each copy's binary header (:mod:`.disk`), key slot and digest objects
(:mod:`.keyslots`), the metadata's validation as cryptsetup validates it (:mod:`.validate`),
json-c's text form (:mod:`.jsonc`) and ``luksDump``'s view (:mod:`.dump`)."""
